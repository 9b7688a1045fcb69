#include "launcher/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/data_loader.h"
#include "runtime/rng.h"
#include "runtime/run_dir.h"
#include "runtime/spec.h"

namespace gdn {

absl::StatusOr<ExperimentSpec> ResolveSpec(const std::string& path,
                                           const std::vector<std::string>& overrides) {
  auto spec = LoadSpec(path);
  if (!spec.ok()) return spec.status();
  for (const std::string& o : overrides)
    if (auto s = ApplyOverride(&*spec, o); !s.ok()) return s;
  FillDefaults(&*spec);
  if (auto s = ValidateRunnable(*spec); !s.ok()) return s;
  return spec;
}

absl::Status ValidateRunnable(const ExperimentSpec& spec) {
  if (auto s = ValidateSpec(spec); !s.ok()) return s;
  if (auto s = ValidateModelSpec(spec); !s.ok()) return s;
  // One process is one rank until the distributed launcher lands.
  if (spec.parallel().tensor_parallel() != 1)
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.tensor_parallel: %d needs %d ranks, this job has 1",
        spec.parallel().tensor_parallel(), spec.parallel().tensor_parallel()));
  return absl::OkStatus();
}

namespace {

struct Datasets {
  TokenDataset train, val;
};

// Data problems are the user's to fix: all come back as InvalidArgument naming the field and file.
absl::StatusOr<Datasets> OpenData(const ExperimentSpec& spec) {
  auto train = TokenDataset::Open(spec.data().train_path());
  if (!train.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.train_path: ", train.status().message()));
  auto val = TokenDataset::Open(spec.data().val_path());
  if (!val.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.val_path: ", val.status().message()));
  for (const auto& [field, ds] : {std::pair{"data.train_path", &*train}, {"data.val_path", &*val}})
    if (ds->max_token() >= spec.model().vocab_size())
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s holds token %d, outside model.vocab_size %d", field, ds->describe(),
          ds->max_token(), spec.model().vocab_size()));
  return Datasets{std::move(*train), std::move(*val)};
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

double Evaluate(LanguageModel& model, const BatchLoader& loader, int batches, Tensor& tokens) {
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    loader.EvalBatch(i, tokens.data<int32_t>());
    sum += model.ForwardLoss(tokens);
  }
  return sum / batches;
}

}  // namespace

absl::StatusOr<TrainResult> Train(const ExperimentSpec& spec, const TrainOptions& options) {
  // Everything a user can get wrong is checked before the first computation or write.
  if (auto s = ValidateRunnable(spec); !s.ok()) return s;
  auto data = OpenData(spec);
  if (!data.ok()) return data.status();
  const DataSpec& ds = spec.data();
  const RunSpec& rs = spec.run();
  auto train_loader = BatchLoader::Create(&data->train, ds.seq_len(), ds.batch_size(),
                                          MixSeed(rs.seed(), HashString("train-data")));
  if (!train_loader.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.train_path: ", train_loader.status().message()));
  auto val_loader = BatchLoader::Create(&data->val, ds.seq_len(), ds.batch_size(), 0);
  if (!val_loader.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.val_path: ", val_loader.status().message()));
  auto dir = RunDirectory::Open(rs.dir());
  if (!dir.ok()) return dir.status();
  if (dir->Exists("metrics.jsonl") && !options.restart)
    return absl::AlreadyExistsError(absl::StrFormat(
        "run.dir: %s already holds a run (status '%s'); choose another run.dir or remove it",
        rs.dir(), dir->Status()));

  if (auto s = dir->WriteFile("spec.textproto", SpecToText(spec)); !s.ok()) return s;
  if (auto s = dir->WriteFile("metrics.jsonl", ""); !s.ok()) return s;
  if (auto s = dir->SetStatus("running"); !s.ok()) return s;

  LanguageModel model(spec, DType::kF32);
  model.Initialize(rs.seed());
  Optimizer optimizer(spec.optimizer(), model.params());
  const int64_t steps = rs.steps();
  const int64_t tokens_per_step = static_cast<int64_t>(ds.batch_size()) * ds.seq_len();
  Tensor tokens = Tensor::Empty({ds.batch_size(), ds.seq_len() + 1}, DType::kI32);
  if (!options.quiet)
    std::printf("gdn train: %s | %.2fM parameters | %d steps x %lld tokens | %s\n",
                rs.dir().c_str(), model.params().NumElements() / 1e6, rs.steps(),
                static_cast<long long>(tokens_per_step), data->train.describe().c_str());

  TrainResult result;
  result.status = "done";
  double first_loss = 0, train_time = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    train_loader->TrainBatch(step, tokens.data<int32_t>());
    model.params().ZeroGrads();
    const double loss = model.ForwardBackward(tokens);
    const double grad_norm = GradNorm(model.params());
    ClipGradients(model.params(), grad_norm, spec.optimizer().grad_clip());
    const double lr = ScheduledLearningRate(spec.optimizer(), step, steps);
    optimizer.Step(step + 1, lr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    train_time += dt;
    if (step == 0) first_loss = loss;
    result.steps = step + 1;
    result.train_loss = loss;

    // A non-finite loss, or one far above where it started, ends the run as diverged.
    const bool diverged = !std::isfinite(loss) || !std::isfinite(grad_norm) || loss > 2 * first_loss;
    const bool last = step + 1 == steps || diverged;
    const bool eval = !diverged && (last || (rs.eval_interval() > 0 && (step + 1) % rs.eval_interval() == 0));
    JsonLine line;
    line.Add("step", step + 1).Add("train_loss", loss).Add("lr", lr).Add("grad_norm", grad_norm);
    line.Add("tokens_per_s", tokens_per_step / dt).Add("tokens", (step + 1) * tokens_per_step);
    if (eval) {
      result.val_loss = Evaluate(model, *val_loader, rs.eval_batches(), tokens);
      line.Add("val_loss", result.val_loss);
    }
    if (auto s = dir->AppendLine("metrics.jsonl", line.str()); !s.ok()) return s;
    if (!options.quiet && (eval || (step + 1) % rs.log_interval() == 0 || step == 0 || diverged)) {
      const double eta = train_time / (step + 1) * (steps - step - 1);
      std::printf("step %5lld/%lld | loss %.4f%s | lr %.2e | gnorm %.3f | %.0f tok/s | eta %s\n",
                  static_cast<long long>(step + 1), static_cast<long long>(steps), loss,
                  eval ? absl::StrFormat(" | val %.4f", result.val_loss).c_str() : "", lr,
                  grad_norm, tokens_per_step * (step + 1) / train_time, Duration(eta).c_str());
      std::fflush(stdout);
    }
    if (diverged) {
      result.status = "diverged";
      result.val_loss = std::nan("");
      break;
    }
  }
  result.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_s = tokens_per_step * result.steps / train_time;
  JsonLine summary;
  summary.Add("status", result.status).Add("steps", result.steps);
  summary.Add("train_loss", result.train_loss).Add("val_loss", result.val_loss);
  summary.Add("tokens", result.steps * tokens_per_step).Add("tokens_per_s", result.tokens_per_s);
  summary.Add("elapsed_s", result.elapsed_s).Add("parameters", model.params().NumElements());
  if (auto s = dir->WriteFile("summary.json", summary.str() + "\n"); !s.ok()) return s;
  if (auto s = dir->SetStatus(result.status); !s.ok()) return s;
  if (!options.quiet)
    std::printf("gdn train: %s after %lld steps | train %.4f | val %.4f | %s\n",
                result.status.c_str(), static_cast<long long>(result.steps), result.train_loss,
                result.val_loss, Duration(result.elapsed_s).c_str());
  return result;
}

}  // namespace gdn
