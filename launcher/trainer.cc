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
  return ValidateModelSpec(spec);
}

absl::Status ValidateLayout(const ExperimentSpec& spec, const ProcessGrid& grid) {
  if (spec.parallel().tensor_parallel() != grid.tp_size)
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.tensor_parallel: %d, but this job's grid has tensor-parallel groups of %d",
        spec.parallel().tensor_parallel(), grid.tp_size));
  const int batch = spec.data().batch_size();
  if (batch % grid.dp_size != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "data.batch_size: %d is not divisible by the data-parallel size %d (%d ranks / "
        "tensor_parallel %d)",
        batch, grid.dp_size, grid.world_size, grid.tp_size));
  const int local = batch / grid.dp_size, micro = spec.data().micro_batch_size();
  if (micro < 0 || (micro > 0 && local % micro != 0))
    return absl::InvalidArgumentError(absl::StrFormat(
        "data.micro_batch_size: %d does not divide the %d sequences per data-parallel rank", micro,
        local));
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

// Sum over the data-parallel group of one number.
double SumOverDp(const ProcessGrid& grid, double x) {
  Tensor t = Tensor::Empty({1}, DType::kF64);
  t.set(0, x);
  grid.dp->AllReduceSum(t);
  return t.at(0);
}

// Mean validation loss: each data-parallel rank scores its rows of each batch.
double Evaluate(LanguageModel& model, const BatchLoader& loader, int batches, Tensor& tokens,
                const ProcessGrid& grid) {
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    loader.EvalBatch(i, tokens.data<int32_t>());
    sum += model.ForwardLoss(tokens);
  }
  return SumOverDp(grid, sum / batches) / grid.dp_size;
}

}  // namespace

absl::StatusOr<TrainResult> Train(const ExperimentSpec& spec, const ProcessGrid& grid,
                                  const TrainOptions& options) {
  // Everything a user can get wrong is checked before the first computation or write. Every rank
  // checks the same things and so fails alike; only rank 0 reports (the caller prints).
  if (auto s = ValidateRunnable(spec); !s.ok()) return s;
  if (auto s = ValidateLayout(spec, grid); !s.ok()) return s;
  auto data = OpenData(spec);
  if (!data.ok()) return data.status();
  const DataSpec& ds = spec.data();
  const RunSpec& rs = spec.run();
  auto train_loader =
      BatchLoader::Create(&data->train, ds.seq_len(), ds.batch_size(),
                          MixSeed(rs.seed(), HashString("train-data")), grid.dp_rank, grid.dp_size);
  if (!train_loader.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.train_path: ", train_loader.status().message()));
  auto val_loader =
      BatchLoader::Create(&data->val, ds.seq_len(), ds.batch_size(), 0, grid.dp_rank, grid.dp_size);
  if (!val_loader.ok())
    return absl::InvalidArgumentError(absl::StrCat("data.val_path: ", val_loader.status().message()));

  // Rank 0 owns the run directory; the others learn its verdict.
  const bool writer = grid.world_rank == 0;
  absl::StatusOr<RunDirectory> dir = absl::UnknownError("not rank 0");
  Tensor verdict = Tensor::Zeros({1}, DType::kI32);
  if (writer) {
    dir = RunDirectory::Open(rs.dir());
    if (!dir.ok()) verdict.set(0, 1);
    else if (dir->Exists("metrics.jsonl") && !options.restart) verdict.set(0, 2);
  }
  grid.world->Broadcast(verdict, 0);
  if (verdict.at(0) == 1)
    return writer ? dir.status() : absl::PermissionDeniedError("rank 0 cannot open run.dir");
  if (verdict.at(0) == 2)
    return absl::AlreadyExistsError(absl::StrFormat(
        "run.dir: %s already holds a run (status '%s'); choose another run.dir or remove it",
        rs.dir(), writer ? dir->Status() : "?"));
  auto write = [&](auto&& fn) -> absl::Status { return writer ? fn(*dir) : absl::OkStatus(); };
  if (auto s = write([&](RunDirectory& d) {
        if (auto s = d.WriteFile("spec.textproto", SpecToText(spec)); !s.ok()) return s;
        if (auto s = d.WriteFile("metrics.jsonl", ""); !s.ok()) return s;
        return d.SetStatus("running");
      });
      !s.ok())
    return s;

  LanguageModel model(spec, DType::kF32, TensorParallel{grid.tp_rank, grid.tp_size}, grid.tp.get());
  model.Initialize(rs.seed());
  Optimizer optimizer(spec.optimizer(), model.params());
  const int64_t steps = rs.steps();
  const int local_batch = ds.batch_size() / grid.dp_size;
  const int micro = ds.micro_batch_size() > 0 ? ds.micro_batch_size() : local_batch;
  const int64_t tokens_per_step = static_cast<int64_t>(ds.batch_size()) * ds.seq_len();
  Tensor tokens = Tensor::Empty({local_batch, ds.seq_len() + 1}, DType::kI32);
  const bool talk = writer && !options.quiet;
  if (talk)
    std::printf("gdn train: %s | %.2fM parameters | %d steps x %lld tokens | %d ranks (dp %d x tp %d) "
                "| %s\n",
                rs.dir().c_str(), model.params().NumElements() / 1e6, rs.steps(),
                static_cast<long long>(tokens_per_step), grid.world_size, grid.dp_size,
                grid.tp_size, data->train.describe().c_str());

  TrainResult result;
  result.status = "done";
  double first_loss = 0, train_time = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    train_loader->TrainBatch(step, tokens.data<int32_t>());
    model.params().ZeroGrads();
    // Each micro-batch's mean loss weighs micro / global of the step's loss.
    const double weight = static_cast<double>(micro) / ds.batch_size();
    double local_loss = 0;
    for (int m = 0; m < local_batch / micro; ++m)
      local_loss += weight * model.ForwardBackward(tokens.Rows(m * micro, (m + 1) * micro), weight);
    model.ReduceGradients(grid.dp.get());
    const double loss = SumOverDp(grid, local_loss);
    const double grad_norm = model.GradNorm();
    ClipGradients(model.params(), grad_norm, spec.optimizer().grad_clip());
    const double lr = ScheduledLearningRate(spec.optimizer(), step, steps);
    optimizer.Step(step + 1, lr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    train_time += dt;
    if (step == 0) first_loss = loss;
    result.steps = step + 1;
    result.train_loss = loss;

    // A non-finite loss, or one far above where it started, ends the run as diverged. Every rank
    // sees the same reduced numbers, so all stop together.
    const bool diverged = !std::isfinite(loss) || !std::isfinite(grad_norm) || loss > 2 * first_loss;
    const bool last = step + 1 == steps || diverged;
    const bool eval = !diverged && (last || (rs.eval_interval() > 0 && (step + 1) % rs.eval_interval() == 0));
    JsonLine line;
    line.Add("step", step + 1).Add("train_loss", loss).Add("lr", lr).Add("grad_norm", grad_norm);
    line.Add("tokens_per_s", tokens_per_step / dt).Add("tokens", (step + 1) * tokens_per_step);
    if (eval) {
      result.val_loss = Evaluate(model, *val_loader, rs.eval_batches(), tokens, grid);
      line.Add("val_loss", result.val_loss);
    }
    if (auto s = write([&](RunDirectory& d) { return d.AppendLine("metrics.jsonl", line.str()); });
        !s.ok())
      return s;
    if (talk && (eval || (step + 1) % rs.log_interval() == 0 || step == 0 || diverged)) {
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
  summary.Add("ranks", grid.world_size).Add("tensor_parallel", grid.tp_size);
  if (auto s = write([&](RunDirectory& d) {
        if (auto s = d.WriteFile("summary.json", summary.str() + "\n"); !s.ok()) return s;
        return d.SetStatus(result.status);
      });
      !s.ok())
    return s;
  if (talk)
    std::printf("gdn train: %s after %lld steps | train %.4f | val %.4f | %s\n",
                result.status.c_str(), static_cast<long long>(result.steps), result.train_loss,
                result.val_loss, Duration(result.elapsed_s).c_str());
  return result;
}

}  // namespace gdn
