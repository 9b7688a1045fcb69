#include "launcher/model_io.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "launcher/trainer.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/export.h"
#include "model/lm.h"
#include "model/parametrization.h"
#include "runtime/data_loader.h"
#include "runtime/rng.h"
#include "runtime/safetensors.h"
#include "runtime/run_dir.h"
#include "runtime/spec.h"

namespace gdn {

namespace {

// The run's resolved spec (spec.textproto) and its checkpoint (newest verified, or `step`'s).
struct RunModel {
  ExperimentSpec spec;
  CheckpointRef checkpoint;
};

absl::StatusOr<RunModel> FindRunModel(const std::string& run_dir, std::optional<int64_t> step) {
  const std::string spec_path = run_dir + "/spec.textproto";
  if (!std::filesystem::is_regular_file(spec_path))
    return absl::InvalidArgumentError(
        absl::StrCat("--run: ", run_dir, " is not a run directory (no spec.textproto)"));
  auto spec = LoadSpec(spec_path);
  if (!spec.ok()) return spec.status();
  FillDefaults(&*spec);
  if (auto s = ValidateModelSpec(*spec); !s.ok()) return absl::InvalidArgumentError(
      absl::StrCat(spec_path, ": ", s.message()));
  auto ref = FindCheckpoint(run_dir, step);
  if (!ref.ok()) return absl::InvalidArgumentError(ref.status().message());
  if (!ref->has_value())
    return absl::InvalidArgumentError(absl::StrCat(
        "--run: ", run_dir, " has no complete checkpoint (train it, or import a model into it)"));
  return RunModel{*spec, **ref};
}

// A one-rank model with the checkpoint's parameters (any tensor-parallel layout it was saved in).
absl::StatusOr<std::unique_ptr<LanguageModel>> LoadRunModel(const RunModel& run) {
  auto model = std::make_unique<LanguageModel>(run.spec, DType::kF32);
  auto loaded = LoadCheckpoint(run.checkpoint, model->params(), nullptr, TensorParallel{});
  if (!loaded.ok()) return loaded.status();
  return model;
}

// Bytes per token of a data set: 1 for gdn's byte-level tokenizer (vocabulary 256); unknown
// otherwise (e.g. llm.c's GPT-2 shards, whose bytes per token depend on the text).
std::optional<double> BytesPerToken(const ExperimentSpec& spec) {
  if (spec.model().vocab_size() == 256) return 1.0;
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExportRun(const std::string& run_dir,
                                                   std::optional<int64_t> step,
                                                   const std::string& out_dir) {
  auto run = FindRunModel(run_dir, step);
  if (!run.ok()) return run.status();
  for (const char* f : {"/config.json", "/model.safetensors"})
    if (std::filesystem::exists(out_dir + f))
      return absl::AlreadyExistsError(absl::StrCat(
          "--out: ", out_dir, " already holds ", f + 1, "; choose another folder or remove it"));
  auto full = ReadFullParameters(run->checkpoint);
  if (!full.ok()) return full.status();
  auto report = ExportModel(run->spec, *full, run->checkpoint.step, out_dir);
  if (!report.ok()) return report.status();
  std::vector<std::string> lines = {absl::StrFormat(
      "gdn export: %s step %d -> %s/config.json, %s/model.safetensors (fla GatedDeltaNetForCausalLM)",
      run_dir, run->checkpoint.step, out_dir, out_dir)};
  for (const std::string& n : report->notes) lines.push_back("  " + n);
  return lines;
}

absl::StatusOr<std::vector<std::string>> ImportRun(const std::string& from_dir,
                                                   const std::string& run_dir,
                                                   const std::vector<std::string>& overrides) {
  namespace fs = std::filesystem;
  if (run_dir.empty()) return absl::InvalidArgumentError("--run: empty");
  if (fs::exists(run_dir + "/spec.textproto") || fs::exists(run_dir + "/checkpoints") ||
      fs::exists(run_dir + "/metrics.jsonl"))
    return absl::AlreadyExistsError(absl::StrCat(
        "--run: ", run_dir, " already holds a run; import into a new directory"));
  auto model = ImportModel(from_dir);
  if (!model.ok()) return model.status();
  ExperimentSpec spec = model->spec;
  for (const std::string& o : overrides)
    if (auto s = ApplyOverride(&spec, o); !s.ok()) return s;
  spec.mutable_run()->set_dir(run_dir);
  // The run directory gets a spec that `gdn train` accepts: train's checks, but for the data
  // files, which may come later (eval --data and sample read none; train checks them). The error
  // blames config.json when the import alone fails them.
  auto trainable = [&](ExperimentSpec s) {
    s.mutable_run()->set_dir(run_dir);
    return ValidateRunnable(s, /*check_data_paths=*/false);
  };
  if (auto s = trainable(spec); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat(
        trainable(model->spec).ok() ? "--set: " : from_dir + "/config.json: ", s.message()));
  // The overrides may not change the model's shape: the weights are fixed.
  auto before = ResolveModelDims(model->spec.model());
  auto after = ResolveModelDims(spec.model());
  if (!after.ok()) return after.status();
  if (before->width != after->width || before->depth != after->depth ||
      before->vocab != after->vocab || before->heads != after->heads ||
      before->value_heads != after->value_heads || before->dk != after->dk ||
      before->dv != after->dv || before->mlp_hidden != after->mlp_hidden ||
      before->conv_size != after->conv_size || before->tied != after->tied)
    return absl::InvalidArgumentError(
        "--set: the overrides change the model's shape, which the imported weights fix");
  // Nor the forward multipliers, which the weights were unfolded with.
  auto forward = [](const ExperimentSpec& s, ParamClass cls) {
    return MultipliersFor(cls, s.parametrization(), s.optimizer().kind(), WidthMultiplier(s)).forward;
  };
  for (ParamClass cls : {ParamClass::kInput, ParamClass::kOutput})
    if (forward(spec, cls) != forward(model->spec, cls))
      return absl::InvalidArgumentError(absl::StrFormat(
          "--set: the overrides change the %s multiplier (%g -> %g), so the imported weights "
          "would compute another function", ParamClassName(cls), forward(model->spec, cls),
          forward(spec, cls)));

  auto dir = RunDirectory::Open(run_dir);
  if (!dir.ok()) return dir.status();
  if (auto s = WriteParametersCheckpoint(run_dir, model->params); !s.ok()) return s;
  if (auto s = dir->WriteFile("spec.textproto", SpecToText(spec)); !s.ok()) return s;
  std::vector<std::string> lines = {absl::StrFormat(
      "gdn import: %s -> %s (spec.textproto and a step-0 parameters-only checkpoint)", from_dir,
      run_dir)};
  for (const std::string& n : model->notes) lines.push_back("  " + n);
  return lines;
}

absl::StatusOr<EvalResult> EvalRun(const std::string& run_dir, const EvalOptions& options) {
  auto run = FindRunModel(run_dir, options.step);
  if (!run.ok()) return run.status();
  const ExperimentSpec& spec = run->spec;
  EvalResult r;
  r.data = options.data.empty() ? spec.data().val_path() : options.data;
  auto data = OpenTokens("--data", r.data, spec.model().vocab_size());
  if (!data.ok()) return data.status();
  const int batch = spec.data().batch_size(), seq = spec.data().seq_len();
  auto loader = BatchLoader::Create(&*data, seq, batch, 0);
  if (!loader.ok()) return absl::InvalidArgumentError(absl::StrCat("--data: ", loader.status().message()));
  // --batches N reads N batches of non-overlapping windows, so at most the file's full batches.
  const int64_t full_batches = loader->num_eval_windows() / batch;
  if (options.batches > full_batches)
    return absl::InvalidArgumentError(absl::StrFormat(
        "--batches %d: %s has %d windows of %d tokens, %d full batches of %d (--batches 0: all)",
        options.batches, r.data, loader->num_eval_windows(), seq + 1, full_batches, batch));
  // --batches 0: all; the default, run.eval_batches, capped as the trainer caps it.
  const int64_t batches =
      options.batches == 0 ? full_batches
                           : loader->eval_batches(options.batches < 0 ? spec.run().eval_batches()
                                                                      : options.batches);
  if (batches == 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "--data: %s has %d windows of %d tokens, fewer than one batch of %d", r.data,
        loader->num_eval_windows(), seq + 1, batch));
  auto model = LoadRunModel(*run);
  if (!model.ok()) return model.status();
  // The trainer's evaluation: the mean of the batches' mean losses (equal-sized batches).
  Tensor tokens = Tensor::Empty({batch, seq + 1}, DType::kI32);
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    loader->EvalBatch(i, tokens.data<int32_t>());
    sum += (*model)->ForwardLoss(tokens);
  }
  r.loss = sum / batches;
  if (!options.logits_out.empty()) {
    loader->EvalBatch(0, tokens.data<int32_t>());
    Tensor inputs = Tensor::Empty({batch, seq}, DType::kI32);
    for (int b = 0; b < batch; ++b)
      std::copy_n(tokens.data<int32_t>() + b * (seq + 1), seq, inputs.data<int32_t>() + b * seq);
    Tensor logits = (*model)->ForwardLogits(inputs);
    if (auto s = WriteSafetensors(options.logits_out,
                                  {{"tokens", inputs},
                                   {"logits", logits.View({batch, seq, spec.model().vocab_size()})}});
        !s.ok())
      return s;
  }
  r.tokens = batches * batch * seq;
  r.step = run->checkpoint.step;
  const auto bpt = BytesPerToken(spec);
  r.bits_per_byte = bpt ? r.loss / std::log(2.0) / *bpt : std::nan("");
  return r;
}

int64_t SampleToken(const float* l, int64_t vocab, double temperature, int64_t top_k, Rng& rng) {
  if (temperature == 0) return std::max_element(l, l + vocab) - l;
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = top_k > 0 ? std::min(top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  std::vector<double> p(k);
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += p[i] = std::exp((l[order[i]] - l[order[0]]) / temperature);
  double u = rng.Uniform() * total;
  for (int64_t i = 0; i < k; ++i) {
    if (u < p[i]) return order[i];
    u -= p[i];
  }
  return order[k - 1];  // u rounded past the last bucket
}

absl::StatusOr<std::string> SampleRun(const std::string& run_dir, const SampleOptions& o) {
  if (o.max_tokens < 0) return absl::InvalidArgumentError("--max-tokens: must be >= 0");
  if (o.temperature < 0) return absl::InvalidArgumentError("--temperature: must be >= 0");
  if (o.top_k < 0) return absl::InvalidArgumentError("--top-k: must be >= 0");
  if (o.prompt.empty()) return absl::InvalidArgumentError("--prompt: must not be empty");
  auto run = FindRunModel(run_dir, o.step);
  if (!run.ok()) return run.status();
  const int64_t vocab = run->spec.model().vocab_size();
  if (vocab != 256)
    return absl::InvalidArgumentError(absl::StrFormat(
        "--prompt: text prompts need a byte-level model (vocabulary 256); this one has %d", vocab));
  auto model = LoadRunModel(*run);
  if (!model.ok()) return model.status();
  LanguageModel& lm = **model;

  // The prompt feeds the recurrent state token by token; its last step's logits pick the first
  // new token.
  LanguageModel::DecodeState state = lm.NewDecodeState(1);
  Tensor token = Tensor::Empty({1}, DType::kI32);
  Tensor logits;
  for (unsigned char c : o.prompt) {
    token.data<int32_t>()[0] = c;
    logits = lm.ForwardStep(token, state);
  }
  Rng rng(o.seed, HashString("sample"));
  std::string out;
  for (int64_t n = 0; n < o.max_tokens; ++n) {
    const int64_t next = SampleToken(logits.data<float>(), vocab, o.temperature, o.top_k, rng);
    out.push_back(static_cast<char>(next));
    token.data<int32_t>()[0] = static_cast<int32_t>(next);
    logits = lm.ForwardStep(token, state);
  }
  return out;
}

}  // namespace gdn
