// The coordinate check of shared/docs/mup.md, asserted: train a few AdamW steps at a deliberately
// large learning rate on one fixed batch, at widths 64..512, and record the mean |coordinate| of
// every module's output (LanguageModel::ForwardLoss probes) after each step. Under muP every
// probe must stay flat in width; under SP the logits must grow with width.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/coord_check.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/spec.h"

namespace gdn {
namespace {

constexpr int kWidths[] = {64, 128, 256, 512};
constexpr int kSteps = 3;
const char* const kProbes[] = {"embedding",     "q_conv",    "k_conv",  "v_conv",
                               "alpha",         "beta",      "recurrent_out",
                               "head_norm_out", "mixer_out", "mlp_out", "logits", "state"};

// Under muP, max/min over widths of every probe after the updates stays below this band.
// Observed (this setup, seed 0, widths 64..512): largest spreads after step 3 are mlp_out 1.57,
// recurrent_out 1.51, state 1.49, logits 1.48, q_conv 1.28; SP's logits spread 3.90 and SP's
// mixer_out / mlp_out ~45.
// What is left of the muP spreads is not a power law in width:
//  - recurrent_out, state, head_norm_out and alpha already differ by 1.2-1.5x at step 0, before any
//    update: A_log and dt_bias are random per head and width 64 has only 3 value heads per layer,
//    so the mean decay (the alpha probe: 1.46 at width 64, 1.72-1.74 above) differs; with another
//    seed (5) alpha is flat and so are these probes (recurrent_out 1.19, state 1.08).
//  - mlp_out and q/k_conv fall slowly with width and converge (mlp_out per doubling: 1.24, 1.16,
//    1.09 and 1.07 from 512 to 1024). Hypothesis: a finite-width term of Adam's per-coordinate
//    normalised update of a matrix whose gradient sums N = B*T rank-one terms: its coherent part is
//    Theta(1) in width, its incoherent part ~ sqrt(N / width) relative to it, so updates shrink
//    with width until width >> N. Evidence: Adam's eps is not the cause (eps 1e-14 or 1e-20 gives
//    the same table); with N = 16 (B 1, T 16) every probe is within 1.24; with N = 64 no trend;
//    with N = 1024 (B 8 x T 128, the default data spec) the trend is stronger: logits 0.240 ->
//    0.082 (2.9x) and mlp_out 1.74x over widths 64..1024 after step 3; with N = 1024 and init_std
//    0.005 mixer_out falls 4.5x. So this band is a statement about this setup (N = 256), not
//    general.
//  - logits at step 0 scale as 1/sqrt(m) (alpha_out/m times a sigma-initialised head), the muP
//    init; after the updates the update part dominates (spread 2.78, 2.40, 1.82, 1.48 at steps
//    0..3), so the logits are only held to the band at the last step.
// (SP here is "init_std sigma for every matrix", so SP's q/k/v and block outputs grow with width
// already at step 0, as sqrt(m); the updates then add more.)
constexpr double kMupBand = 2.0;

ExperimentSpec CoordSpec(ParametrizationSpec::Kind kind) {
  ExperimentSpec s;
  FillDefaults(&s);
  ModelSpec* m = s.mutable_model();
  m->set_vocab_size(256);
  m->set_depth(2);
  m->set_head_dim(16);
  ParametrizationSpec* p = s.mutable_parametrization();
  p->set_kind(kind);
  p->set_base_width(64);
  p->set_init_std(0.02);
  OptimizerSpec* o = s.mutable_optimizer();
  o->set_kind(OptimizerSpec::ADAMW);
  o->set_lr(1e-2);  // deliberately large
  o->set_weight_decay(0);
  return s;
}

// probe -> step (0 = at init, 1..kSteps after each update) -> value per width.
using Table = std::map<std::string, std::vector<std::vector<double>>>;

Table Check(ParametrizationSpec::Kind kind) {
  Tensor tokens = Tensor::Empty({4, 65}, DType::kI32);  // B = 4, T = 64
  std::mt19937_64 gen(2024);
  std::uniform_int_distribution<int> dist(0, 255);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = dist(gen);
  const std::vector<int> widths(std::begin(kWidths), std::end(kWidths));
  const CoordCheckResult r = RunCoordCheck(CoordSpec(kind), widths, kSteps, tokens);
  std::printf("\n%s", FormatCoordCheck(r).c_str());
  for (const char* k : kProbes) EXPECT_TRUE(r.values.count(k)) << "probe " << k << " missing";
  return r.values;
}

double Spread(const std::vector<double>& v) {
  return *std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end());
}

TEST(CoordCheck, MupIsFlatAndSpIsNot) {
  const auto t0 = std::chrono::steady_clock::now();
  const Table mup = Check(ParametrizationSpec::MUP);
  const Table sp = Check(ParametrizationSpec::SP);
  std::printf("(%.1f s)\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  for (const char* k : kProbes) {
    for (int step = 0; step <= kSteps; ++step)
      for (double x : mup.at(k)[step]) ASSERT_TRUE(std::isfinite(x) && x > 0) << k;
    // The check: every probe is flat in width under muP after each update (the logits after the
    // last; see kMupBand).
    for (int step = std::string(k) == "logits" ? kSteps : 1; step <= kSteps; ++step)
      EXPECT_LE(Spread(mup.at(k)[step]), kMupBand)
          << "muP probe '" << k << "' is not flat in width after step " << step;
  }

  // SP is not flat: the logits grow with width (observed 3.90x from 64 to 512) ...
  const std::vector<double>& sp_logits = sp.at("logits")[kSteps];
  EXPECT_GT(sp_logits.back() / sp_logits.front(), 1.5 * kMupBand) << "SP logits 512 vs 64";
  EXPECT_GT(Spread(sp_logits), kMupBand) << "the band must separate SP from muP on the logits";
  // ... and not only from the init (SP's 2.83x = sqrt(8) at step 0): the growth of mean |logit|
  // over the 3 updates is 4.6x larger at 512 than at 64 under SP, 0.88x under muP.
  auto growth = [&](const Table& t) {
    const auto &first = t.at("logits")[0], &last = t.at("logits")[kSteps];
    return (last.back() - first.back()) / (last.front() - first.front());
  };
  EXPECT_GT(growth(sp), 3.0);
  EXPECT_LT(growth(mup), kMupBand);
  EXPECT_GT(growth(mup), 1.0 / kMupBand);
  // Most probes leave the band under SP (observed: all but embedding, alpha and beta).
  int sp_outside = 0;
  for (const char* k : kProbes) sp_outside += Spread(sp.at(k)[kSteps]) > kMupBand;
  EXPECT_GE(sp_outside, 6);
}

}  // namespace
}  // namespace gdn
