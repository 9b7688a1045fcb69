#include "model/coord_check.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/spec.h"

namespace gdn {

namespace {
// Every probe the model records, in the order of the forward pass.
const char* const kProbeOrder[] = {"embedding", "q_conv",        "k_conv",    "v_conv",
                                   "alpha",     "beta",          "recurrent_out",
                                   "head_norm_out", "mixer_out", "mlp_out",   "logits", "state"};
}  // namespace

double CoordCheckResult::Spread(const std::string& probe, int step) const {
  const std::vector<double>& v = values.at(probe).at(step);
  return *std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end());
}

CoordCheckResult RunCoordCheck(const ExperimentSpec& base, const std::vector<int>& widths,
                               int steps, const Tensor& tokens) {
  CoordCheckResult result;
  result.label = absl::StrCat(
      base.parametrization().kind() == ParametrizationSpec::MUP ? "muP" : "SP", " ",
      base.optimizer().kind() == OptimizerSpec::ADAMW ? "AdamW" : "SGD");
  result.widths = widths;
  result.steps = steps;
  result.probes.assign(std::begin(kProbeOrder), std::end(kProbeOrder));
  for (const std::string& k : result.probes)
    result.values[k].assign(steps + 1, std::vector<double>(widths.size(), 0.0));

  for (size_t w = 0; w < widths.size(); ++w) {
    ExperimentSpec spec = base;
    spec.mutable_model()->set_width(widths[w]);
    OptimizerSpec* o = spec.mutable_optimizer();
    o->set_warmup_steps(0);
    o->set_decay(OptimizerSpec::CONSTANT);
    o->set_grad_clip(0);  // a global clip would tie every update to the gradient norm
    LanguageModel model(spec, DType::kF32);
    model.Initialize(spec.run().seed());
    Optimizer optimizer(spec.optimizer(), model.params());
    for (int step = 0; step <= steps; ++step) {
      if (step > 0) {
        model.params().ZeroGrads();
        model.ForwardBackward(tokens);
        optimizer.Step(step, o->lr());
      }
      Probes probes;
      model.ForwardLoss(tokens, &probes);
      for (const std::string& k : result.probes) {
        CHECK(probes.count(k)) << "the model records no probe " << k;
        result.values[k][step][w] = probes[k];
      }
    }
  }
  return result;
}

std::string FormatCoordCheck(const CoordCheckResult& r) {
  std::string out = absl::StrFormat(
      "coordinate check, %s (mean |coordinate| of each module's output; per-layer probes summed "
      "over layers)\n",
      r.label);
  for (int step = 0; step <= r.steps; ++step) {
    absl::StrAppendFormat(&out, "step %-16d", step);
    for (int w : r.widths) absl::StrAppendFormat(&out, " %10d", w);
    out += "    max/min\n";
    for (const std::string& k : r.probes) {
      absl::StrAppendFormat(&out, "  %-19s", k);
      for (double x : r.values.at(k)[step]) absl::StrAppendFormat(&out, " %10.4g", x);
      absl::StrAppendFormat(&out, "   %8.2f\n", r.Spread(k, step));
    }
  }
  return out;
}

std::string CoordCheckCsv(const std::vector<CoordCheckResult>& results) {
  std::string out = "config,probe,step,width,value\n";
  for (const CoordCheckResult& r : results)
    for (const std::string& k : r.probes)
      for (int step = 0; step <= r.steps; ++step)
        for (size_t w = 0; w < r.widths.size(); ++w)
          absl::StrAppendFormat(&out, "%s,%s,%d,%d,%.9g\n", r.label, k, step, r.widths[w],
                                r.values.at(k)[step][w]);
  return out;
}

}  // namespace gdn
