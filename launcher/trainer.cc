#include "launcher/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "kernels/ops.h"
#include "launcher/process.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/data_loader.h"
#ifdef GDN_WITH_CUDA
#include "runtime/cuda_device.h"
#endif
#ifdef GDN_WITH_NCCL
#include "runtime/nccl_communicator.h"
#endif
#include "runtime/rng.h"
#include "runtime/run_dir.h"
#include "runtime/spec.h"

namespace gdn {

namespace {
std::optional<int> SignalNumber(absl::string_view name);

absl::Status ValidateCheckpointing(const RunSpec& r) {
  if (r.checkpoint_interval() < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("run.checkpoint_interval: must be >= 0 (0: only at the end), got ", r.checkpoint_interval()));
  if (r.keep_checkpoints() < 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "run.keep_checkpoints: must be >= 0 (0: none once the run has ended), got ",
        r.keep_checkpoints()));
  std::vector<std::string> seen;
  for (const auto& [field, names] : {std::pair{"run.preempt_signals", r.preempt_signals()},
                                     {"run.checkpoint_signals", r.checkpoint_signals()}})
    for (absl::string_view name : absl::StrSplit(names, ',', absl::SkipEmpty())) {
      name = absl::StripAsciiWhitespace(name);
      if (!SignalNumber(name).has_value() || name == "KILL" || name == "STOP")
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": unknown signal '", name, "' (use TERM, INT, HUP, USR1, USR2)"));
      if (std::find(seen.begin(), seen.end(), name) != seen.end())
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": ", name, " is also in run.preempt_signals (a signal can do one thing)"));
      seen.emplace_back(name);
    }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<ExperimentSpec> ResolveSpec(const std::string& path,
                                           const std::vector<std::string>& overrides,
                                           bool check_data_paths) {
  auto spec = LoadSpec(path);
  if (!spec.ok()) return spec.status();
  for (const std::string& o : overrides)
    if (auto s = ApplyOverride(&*spec, o); !s.ok()) return s;
  FillDefaults(&*spec);
  if (auto s = ValidateRunnable(*spec, check_data_paths); !s.ok()) return s;
  return spec;
}

absl::Status ValidateRunnable(const ExperimentSpec& spec, bool check_data_paths) {
  if (auto s = ValidateSpec(spec, check_data_paths); !s.ok()) return s;
  if (auto s = ValidateCheckpointing(spec.run()); !s.ok()) return s;
  return ValidateModelSpec(spec);
}

absl::StatusOr<TokenDataset> OpenTokens(const std::string& field, const std::string& path,
                                        int vocab_size) {
  auto ds = TokenDataset::Open(path);
  if (!ds.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", ds.status().message()));
  if (ds->max_token() >= vocab_size)
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s holds token %d, outside model.vocab_size %d",
                                                      field, ds->describe(), ds->max_token(), vocab_size));
  return ds;
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

absl::Status CheckMemoryNeed(const ExperimentSpec& spec, const ProcessGrid& grid, Device device) {
  auto dims = ResolveModelDims(spec.model());
  if (!dims.ok()) return dims.status();
  const OptimizerSpec& o = spec.optimizer();
  const double state = (o.kind() == OptimizerSpec::ADAMW ? 8 : o.momentum() != 0 ? 4 : 0) /
                       (spec.parallel().zero_stage() == 1 ? grid.dp_size : 1);
  const double params = ParameterCount(*dims) / grid.tp_size;
  const DataSpec& data = spec.data();
  const double sequences = data.micro_batch_size() > 0 ? data.micro_batch_size()
                                                       : double(data.batch_size()) / grid.dp_size;
  // The residual stream at each layer's input, and the step's int32 tokens.
  const double stream = sequences * data.seq_len() * dims->width * 4.0 * (dims->depth + 1) +
                        double(data.batch_size()) / grid.dp_size * (data.seq_len() + 1) * 4;
  const double need = params * (8 + state) + stream;
  double have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  const char* where = "this machine's memory";
#ifdef GDN_WITH_CUDA
  if (device == Device::kCUDA) have = double(cuda::DeviceTotalBytes()), where = "the GPU's memory";
#else
  (void)device;
#endif
  if (need <= have) return absl::OkStatus();
  const char* culprit = params * (8 + state) >= stream
                            ? "model sizes (model.width, depth, vocab_size, mlp_ratio, ...)"
                            : "data.batch_size (or micro_batch_size) x data.seq_len";
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: a rank needs at least %.3g GB (%.3g parameters at %g bytes with their gradients and "
      "optimizer state: %.3g GB; activations: %.3g GB), more than %s (%.3g GB)",
      culprit, need / 1e9, params, 8 + state, params * (8 + state) / 1e9, stream / 1e9, where,
      have / 1e9));
}

namespace {

struct Datasets {
  TokenDataset train, val;
};

// Data problems are the user's to fix: all come back as InvalidArgument naming the field and file.
absl::StatusOr<Datasets> OpenData(const ExperimentSpec& spec) {
  const int vocab = spec.model().vocab_size();
  auto train = OpenTokens("data.train_path", spec.data().train_path(), vocab);
  if (!train.ok()) return train.status();
  auto val = OpenTokens("data.val_path", spec.data().val_path(), vocab);
  if (!val.ok()) return val.status();
  return Datasets{std::move(*train), std::move(*val)};
}

// The device a run computes on, if this build and machine have it.
absl::StatusOr<Device> RunDevice(const ExperimentSpec& spec, const ProcessGrid& grid) {
  if (spec.run().device() == RunSpec::CPU) {
    if (spec.run().precision() != RunSpec::FP32)
      return absl::InvalidArgumentError("run.precision: BF16 needs run.device: CUDA (the CPU computes in float32)");
    return Device::kCPU;
  }
#ifdef GDN_WITH_CUDA
  std::string why;
  if (!cuda::GpuAvailable(&why))
    return absl::InvalidArgumentError(absl::StrCat("run.device: CUDA, but no GPU is usable: ", why));
#ifndef GDN_WITH_NCCL
  if (grid.world_size > 1)
    return absl::InvalidArgumentError(absl::StrFormat(
        "run.device: CUDA with %d ranks needs NCCL, and this gdn was built without it",
        grid.world_size));
#endif
  (void)grid;
  return Device::kCUDA;
#else
  (void)grid;
  return absl::InvalidArgumentError("run.device: CUDA, but this gdn was built without CUDA");
#endif
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

// Sum over the data-parallel group of one number.
double SumOverDp(Communicator& dp, double x) {
  Tensor t = Tensor::Empty({1}, DType::kF64);
  t.set(0, x);
  dp.AllReduceSum(t);
  return t.at(0);
}

// Mean validation loss over `wanted` batches, or the dataset's full batches if fewer (each window
// once): each data-parallel rank scores its rows of each batch.
double Evaluate(LanguageModel& model, const BatchLoader& loader, int wanted, Tensor& tokens,
                const ProcessGrid& grid) {
  const int64_t batches = loader.eval_batches(wanted);
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    loader.EvalBatch(i, tokens.data<int32_t>());
    sum += model.ForwardLoss(tokens);
  }
  return SumOverDp(*grid.dp, sum / batches) / grid.dp_size;
}


// --- How a run starts: fresh, resumed from a checkpoint, or already over.

// The fields that do not change what a run computes: a run directory resumes under other values
// of these (another layout, checkpoint cadence, log cadence or directory path).
std::string RunIdentity(ExperimentSpec spec) {
  FillDefaults(&spec);
  ClearBookkeeping(&spec);
  spec.mutable_run()->clear_log_interval();
  spec.mutable_run()->clear_recompute();
  spec.mutable_run()->clear_save_recurrence();
  spec.clear_parallel();
  spec.clear_sweep();
  return SpecToText(spec);
}

// The first line of `now` that `before` lacks (to say how two specs differ).
std::string FirstNewLine(const std::string& before, const std::string& now) {
  const std::vector<std::string> old_lines = absl::StrSplit(before, '\n');
  for (absl::string_view line : absl::StrSplit(now, '\n'))
    if (std::find(old_lines.begin(), old_lines.end(), std::string(line)) == old_lines.end())
      return std::string(absl::StripAsciiWhitespace(line));
  return "?";
}

struct StartPlan {
  int64_t resume_step = -1;             // a verified checkpoint's step, or -1: from the start
  std::optional<TrainResult> finished;  // the run is already over (done or diverged)
  bool discard = false;  // --restart: rank 0 discards the old run once the model is built
};

absl::StatusOr<StartPlan> PlanStart(const RunDirectory& dir, const ExperimentSpec& spec,
                                    bool restart) {
  StartPlan plan;
  if (restart) {
    plan.discard = true;
    return plan;
  }
  if (!dir.Exists("spec.textproto")) {
    if (dir.Exists("metrics.jsonl"))
      return absl::AlreadyExistsError(absl::StrFormat(
          "run.dir: %s holds metrics but no spec.textproto; choose another run.dir or pass "
          "--restart to discard it", dir.path()));
    return plan;
  }
  auto text = dir.ReadFile("spec.textproto");
  if (!text.ok()) return text.status();
  auto old = ParseSpecText(*text, dir.File("spec.textproto"));
  const std::string now_id = RunIdentity(spec);
  if (!old.ok() || RunIdentity(*old) != now_id)
    return absl::AlreadyExistsError(absl::StrFormat(
        "run.dir: %s holds another run (its spec.textproto differs at '%s'); choose another "
        "run.dir, or pass --restart to discard it",
        dir.path(), old.ok() ? FirstNewLine(RunIdentity(*old), now_id) : old.status().message()));
  const std::string status = dir.Status();
  if ((status == "done" || status == "diverged") && dir.Exists("summary.json")) {
    auto summary = dir.ReadFile("summary.json");
    if (!summary.ok()) return summary.status();
    TrainResult r;
    r.status = status;
    const auto number = [&](const char* key) { return JsonNumber(*summary, key).value_or(0); };
    r.steps = static_cast<int64_t>(number("steps"));
    r.train_loss = number("train_loss");
    r.val_loss = number("val_loss");
    r.tokens_per_s = number("tokens_per_s");
    r.elapsed_s = number("elapsed_s");
    plan.finished = r;
    return plan;
  }
  auto checkpoint = FindCheckpoint(dir.path());
  if (!checkpoint.ok()) return checkpoint.status();
  if (checkpoint->has_value()) plan.resume_step = (*checkpoint)->step;
  return plan;
}

// Rank 0's plan travels to the other ranks as numbers: [error kind, resume step, finished?,
// diverged?, steps, train loss, val loss, tokens/s, elapsed].
constexpr int kVerdictSize = 9;

void EncodePlan(const absl::StatusOr<StartPlan>& plan, const Tensor& v) {
  if (!plan.ok()) {
    v.set(0, plan.status().code() == absl::StatusCode::kAlreadyExists ? 2 : 1);
    return;
  }
  v.set(1, static_cast<double>(plan->resume_step));
  if (const auto& f = plan->finished) {
    v.set(2, 1);
    v.set(3, f->status == "diverged");
    v.set(4, static_cast<double>(f->steps));
    v.set(5, f->train_loss);
    v.set(6, f->val_loss);
    v.set(7, f->tokens_per_s);
    v.set(8, f->elapsed_s);
  }
}

absl::Status DecodeVerdict(const Tensor& v, const absl::StatusOr<StartPlan>& plan,
                           const std::string& run_dir) {
  if (v.at(0) == 0) return absl::OkStatus();
  if (!plan.ok() && plan.status().code() != absl::StatusCode::kUnknown) return plan.status();
  return v.at(0) == 2 ? absl::AlreadyExistsError(absl::StrCat("run.dir: ", run_dir, " holds another run"))
                      : absl::PermissionDeniedError(absl::StrCat("run.dir: rank 0 cannot start ", run_dir));
}

StartPlan DecodePlan(const Tensor& v) {
  StartPlan plan;
  plan.resume_step = static_cast<int64_t>(v.at(1));
  if (v.at(2) != 0) {
    TrainResult r;
    r.status = v.at(3) != 0 ? "diverged" : "done";
    r.steps = static_cast<int64_t>(v.at(4));
    r.train_loss = v.at(5);
    r.val_loss = v.at(6);
    r.tokens_per_s = v.at(7);
    r.elapsed_s = v.at(8);
    plan.finished = r;
  }
  return plan;
}

// Writes the spec, and keeps the metrics of the steps up to `step` (those after the checkpoint
// are taken again, so the file reads as if the run had never stopped). With `discard` (--restart)
// the old run's checkpoints and summary go first: only now, with the new model built, so that a
// restart refused or failed before this point loses nothing.
absl::Status PrepareFiles(RunDirectory& dir, const ExperimentSpec& spec, int64_t step,
                          bool discard) {
  if (discard) {
    std::error_code ec;
    std::filesystem::remove_all(dir.File("checkpoints"), ec);
    if (ec) return absl::InternalError(absl::StrCat(dir.File("checkpoints"), ": ", ec.message()));
    std::filesystem::remove(dir.File("summary.json"), ec);
  }
  if (auto s = dir.WriteFile("spec.textproto", SpecToText(spec)); !s.ok()) return s;
  std::string kept;
  if (step > 0 && dir.Exists("metrics.jsonl")) {
    auto metrics = dir.ReadFile("metrics.jsonl");
    if (!metrics.ok()) return metrics.status();
    for (absl::string_view line : absl::StrSplit(*metrics, '\n', absl::SkipEmpty())) {
      auto at = JsonNumber(std::string(line), "step");
      if (at.ok() && *at <= step) absl::StrAppend(&kept, line, "\n");
    }
  }
  if (auto s = dir.WriteFile("metrics.jsonl", kept); !s.ok()) return s;
  return dir.SetStatus("running");
}

// --- Preemption and checkpoints on request: a signal sets a flag; the ranks compare flags at
// each step boundary.

volatile std::sig_atomic_t preempt_requested = 0, checkpoint_requested = 0;
extern "C" void OnPreemptSignal(int) { preempt_requested = 1; }
extern "C" void OnCheckpointSignal(int) { checkpoint_requested = 1; }

constexpr std::pair<const char*, int> kSignals[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    {"KILL", SIGKILL}, {"STOP", SIGSTOP}};

std::optional<int> SignalNumber(absl::string_view name) {
  for (const auto& [n, number] : kSignals)
    if (name == n) return number;
  return std::nullopt;
}

// Handles the run's preemption and checkpoint signals while it lives; restores the previous
// handlers after.
class PreemptionGuard {
 public:
  PreemptionGuard(const std::string& preempt, const std::string& checkpoint) {
    preempt_requested = 0;
    checkpoint_requested = 0;
    Install(preempt, OnPreemptSignal);
    Install(checkpoint, OnCheckpointSignal);
  }
  struct Requests {
    bool stop = false, checkpoint = false;
  };
  // What any rank was asked since the last call (collective over `world`).
  Requests OnAnyRank(Communicator& world) const {
    Tensor flags = Tensor::Empty({2}, DType::kI32);
    flags.set(0, preempt_requested ? 1 : 0);
    flags.set(1, checkpoint_requested ? 1 : 0);
    checkpoint_requested = 0;
    world.AllReduceMax(flags);
    return {flags.at(0) != 0, flags.at(1) != 0};
  }

 private:
  void Install(const std::string& names, void (*handler)(int)) {
    for (absl::string_view name : absl::StrSplit(names, ',', absl::SkipEmpty()))
      handlers_.Set(*SignalNumber(absl::StripAsciiWhitespace(name)), handler);
  }

  SignalHandlers handlers_;  // (a signal named twice gets its first disposition back)
};

// Test hook (tests/resume_test.sh): GDN_TEST_RAISE_AFTER_STEP=STEP:SIGNAL[:RANK[:next]] makes world
// rank RANK (default 0) send itself SIGNAL (KILL, TERM, USR2, STOP, ...) at the end of step STEP,
// before that step's checkpoint: a deterministic `kill -9`, or a preemption taking effect at that
// step. With `next`, at the start of the following step instead, after every rank agreed to go on
// (a rank stopping there leaves the others inside that step's collectives).
void MaybeRaiseForTest(int64_t step, int world_rank, bool next_start) {
  const char* env = std::getenv("GDN_TEST_RAISE_AFTER_STEP");
  if (env == nullptr) return;
  std::vector<std::string> f = absl::StrSplit(env, ':');
  int64_t at = -1;
  int rank = 0;
  if (f.size() < 2 || f.size() > 4 || !absl::SimpleAtoi(f[0], &at) ||
      (f.size() > 2 && !absl::SimpleAtoi(f[2], &rank)) || (f.size() > 3 && f[3] != "next"))
    LOG(FATAL) << "GDN_TEST_RAISE_AFTER_STEP=" << env << ": expected STEP:SIGNAL[:RANK[:next]]";
  const auto sig = SignalNumber(f[1]);
  CHECK(sig.has_value()) << "GDN_TEST_RAISE_AFTER_STEP: unknown signal " << f[1];
  if (at == step && rank == world_rank && next_start == (f.size() > 3)) std::raise(*sig);
}

}  // namespace

GradientReducer::Options ReducerOptions(const ExperimentSpec& spec) {
  GradientReducer::Options o;
  o.bucket_bytes = static_cast<int64_t>(spec.parallel().bucket_mb() * (1 << 20));
  o.shard_optimizer = spec.parallel().zero_stage() == 1;
  return o;
}

StepResult TrainStep(LanguageModel& model, GradientReducer& reducer, Optimizer& optimizer,
                     const Tensor& tokens, int micro, int global_batch, double grad_clip,
                     double lr, int64_t step, Communicator& dp) {
  reducer.ZeroGrads();
  // Each micro-batch's mean loss weighs micro / global of the step's loss.
  const double weight = static_cast<double>(micro) / global_batch;
  const int64_t micro_batches = tokens.dim(0) / micro;
  double local_loss = 0;
  for (int64_t m = 0; m < micro_batches; ++m)
    local_loss += weight * model.ForwardBackward(tokens.Rows(m * micro, (m + 1) * micro), weight,
                                                 m + 1 == micro_batches ? &reducer : nullptr);
  reducer.Finish();
  StepResult r;
  r.loss = SumOverDp(dp, local_loss);
  r.grad_norm = reducer.GradNorm();
  optimizer.Step(step, lr, ClipScale(r.grad_norm, grad_clip));
  reducer.GatherValues();
  return r;
}

absl::StatusOr<TrainResult> Train(const ExperimentSpec& spec, const ProcessGrid& job_grid,
                                  const TrainOptions& options) {
  // Everything a user can get wrong is checked before the first computation or write. Every rank
  // checks the same things and so fails alike; only rank 0 reports (the caller prints).
  if (auto s = ValidateRunnable(spec); !s.ok()) return s;
  if (auto s = ValidateLayout(spec, job_grid); !s.ok()) return s;
  // From here on a preemption signal is taken at the first step boundary, also one that comes
  // while the run sets up (it would otherwise kill the process before its handlers exist).
  PreemptionGuard preemption(
      absl::StrCat(spec.run().preempt_signals(), ",", options.also_preempt_on),
      spec.run().checkpoint_signals());
  auto device = RunDevice(spec, job_grid);
  if (!device.ok()) return device.status();
  if (auto s = CheckMemoryNeed(spec, job_grid, *device); !s.ok()) return s;
  // On GPUs with several ranks the groups carry CUDA tensors (activations, gradients) through
  // NCCL and CPU ones (loss sums, verdicts, checkpoint agreement) through the job's MPI groups.
  std::optional<ProcessGrid> device_grid;
#ifdef GDN_WITH_NCCL
  if (*device == Device::kCUDA && job_grid.world_size > 1) {
    auto g = WithNcclForCudaTensors(job_grid);
    if (!g.ok()) return g.status();
    device_grid = std::move(*g);
  }
#endif
  const ProcessGrid& grid = device_grid.has_value() ? *device_grid : job_grid;
  // Rank 0's device, for the log and summary.json.
  std::string device_name = "CPU";
#ifdef GDN_WITH_CUDA
  if (*device == Device::kCUDA) device_name = cuda::DescribeCurrentDevice();
#endif
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
  if (val_loader->eval_batches(1) == 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "data.val_path: %s holds %d windows of %d tokens, fewer than one batch of %d",
        data->val.describe(), val_loader->num_eval_windows(), ds.seq_len() + 1, ds.batch_size()));

  // Rank 0 owns the run directory and decides how this run starts; the others learn its verdict.
  const bool writer = grid.world_rank == 0;
  absl::StatusOr<RunDirectory> dir = absl::UnknownError("not rank 0");
  absl::StatusOr<StartPlan> plan = absl::UnknownError("not rank 0");
  std::optional<RunDirectory::Lock> lock;  // held until this run returns
  if (writer) {
    dir = RunDirectory::Open(rs.dir());
    if (dir.ok()) {
      auto l = dir->TryLock();
      if (l.ok()) lock.emplace(std::move(*l));
      plan = !l.ok() ? absl::StatusOr<StartPlan>(l.status()) : PlanStart(*dir, spec, options.restart);
    } else {
      plan = dir.status();
    }
  }
  Tensor verdict = Tensor::Zeros({kVerdictSize}, DType::kF64);
  if (writer) EncodePlan(plan, verdict);
  grid.world->Broadcast(verdict, 0);
  if (auto s = DecodeVerdict(verdict, plan, rs.dir()); !s.ok()) return s;
  const StartPlan start_plan = writer ? *plan : DecodePlan(verdict);
  const bool talk = writer && !options.quiet;
  if (start_plan.finished.has_value()) {
    if (talk)
      std::printf("gdn train: %s already %s after %lld steps | val %.4f\n", rs.dir().c_str(),
                  start_plan.finished->status.c_str(),
                  static_cast<long long>(start_plan.finished->steps), start_plan.finished->val_loss);
    return *start_plan.finished;
  }
  auto write = [&](auto&& fn) -> absl::Status { return writer ? fn(*dir) : absl::OkStatus(); };

  // The precision of this run's matrix products, restored when the run ends (sweeps run several).
  struct PrecisionScope {
    ops::MatmulPrecision before = ops::GetMatmulPrecision();
    explicit PrecisionScope(RunSpec::Precision p) {
      ops::SetMatmulPrecision(p == RunSpec::BF16 ? ops::MatmulPrecision::kBfloat16
                                                 : ops::MatmulPrecision::kFloat32);
    }
    ~PrecisionScope() { ops::SetMatmulPrecision(before); }
  } precision(rs.precision());
  LanguageModel model(spec, DType::kF32, TensorParallel{grid.tp_rank, grid.tp_size}, grid.tp.get(),
                      *device);
  model.Initialize(rs.seed());
  model.set_recompute(rs.recompute());
  model.set_save_recurrence(rs.save_recurrence());
  GradientReducer reducer(model.params(), TensorParallel{grid.tp_rank, grid.tp_size}, grid.tp.get(),
                          grid.dp.get(), ReducerOptions(spec));
  Optimizer optimizer(spec.optimizer(), model.params(), &reducer);
  TrainerState state;
  const TensorParallel tp{grid.tp_rank, grid.tp_size};
  if (start_plan.resume_step >= 0) {
    // Every rank reads the checkpoint rank 0 verified; all must load it or none goes on.
    const CheckpointRef ref{start_plan.resume_step, CheckpointPath(rs.dir(), start_plan.resume_step)};
    auto loaded = LoadCheckpoint(ref, model.params(), &optimizer, tp);
    Tensor failed = Tensor::Zeros({1}, DType::kI32);
    failed.set(0, loaded.ok() ? 0 : 1);
    grid.world->AllReduceMax(failed);
    if (!loaded.ok()) return loaded.status();
    if (failed.at(0) != 0) return absl::DataLossError(absl::StrCat(ref.path, ": another rank could not load it"));
    state = *loaded;
  }
  auto prepare = [&](RunDirectory& d) {
    return PrepareFiles(d, spec, state.step, start_plan.discard);
  };
  if (auto s = write(prepare); !s.ok()) return s;
  // From here an error returned leaves the status "failed" (a crash leaves "running", which
  // readers show as interrupted once the lock is released).
  struct FailedUnlessDisarmed {
    const RunDirectory* dir;  // rank 0's; nullptr on the others
    bool armed = true;
    ~FailedUnlessDisarmed() {
      if (armed && dir != nullptr) (void)dir->SetStatus("failed");
    }
  } failed_status{writer ? &*dir : nullptr};

  const int64_t steps = rs.steps();
  const int local_batch = ds.batch_size() / grid.dp_size;
  const int micro = ds.micro_batch_size() > 0 ? ds.micro_batch_size() : local_batch;
  const int64_t tokens_per_step = static_cast<int64_t>(ds.batch_size()) * ds.seq_len();
  Tensor tokens = Tensor::Empty({local_batch, ds.seq_len() + 1}, DType::kI32);
  if (talk)
    std::printf("gdn train: %s | %.2fM parameters | %d steps x %lld tokens | %d ranks (dp %d x tp %d) "
                "on %s | %s%s\n",
                rs.dir().c_str(), model.params().NumElements() / 1e6, rs.steps(),
                static_cast<long long>(tokens_per_step), grid.world_size, grid.dp_size,
                grid.tp_size, device_name.c_str(), data->train.describe().c_str(),
                start_plan.resume_step >= 0
                    ? absl::StrFormat(" | resuming from step %d", state.step).c_str()
                    : "");

  const CheckpointLayout layout{tp, grid.dp_rank, grid.world.get()};
  auto checkpoint = [&]() {
    return SaveCheckpoint(rs.dir(), state, model.params(), &optimizer, layout,
                          std::max(1, rs.keep_checkpoints()));
  };
  TrainResult result;
  result.status = "done";
  result.steps = state.step;
  result.train_loss = state.last_loss;
  // Killed after its last checkpoint but before its summary: only the final evaluation is missing.
  if (state.step >= steps) result.val_loss = Evaluate(model, *val_loader, rs.eval_batches(), tokens, grid);
  const int64_t first_step = state.step;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = first_step; step < steps; ++step) {
    MaybeRaiseForTest(step, grid.world_rank, true);
    const auto t0 = std::chrono::steady_clock::now();
    train_loader->TrainBatch(step, tokens.data<int32_t>());
    const double lr = ScheduledLearningRate(spec.optimizer(), step, steps);
    const auto [loss, grad_norm] =
        TrainStep(model, reducer, optimizer, tokens, micro, ds.batch_size(),
                  spec.optimizer().grad_clip(), lr, step + 1, *grid.dp);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.train_time_s += dt;
    if (step == 0) state.first_loss = loss;
    state.step = step + 1;
    state.last_loss = loss;
    result.steps = step + 1;
    result.train_loss = loss;

    // A non-finite loss, or one far above where it started, ends the run as diverged. Every rank
    // sees the same reduced numbers, so all stop together.
    const bool diverged =
        !std::isfinite(loss) || !std::isfinite(grad_norm) || loss > 2 * state.first_loss;
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
    if (talk && (eval || (step + 1) % rs.log_interval() == 0 || step == first_step || diverged)) {
      const double step_time = state.train_time_s / (step + 1);
      std::printf("step %5lld/%lld | loss %.4f%s | lr %.2e | gnorm %.3f | %.0f tok/s | eta %s\n",
                  static_cast<long long>(step + 1), static_cast<long long>(steps), loss,
                  eval ? absl::StrFormat(" | val %.4f", result.val_loss).c_str() : "", lr,
                  grad_norm, tokens_per_step * (step + 1) / state.train_time_s,
                  Duration(step_time * (steps - step - 1)).c_str());
      std::fflush(stdout);
    }
    if (diverged) {
      result.status = "diverged";
      result.val_loss = std::nan("");
      break;
    }
    // Checkpoints: periodic, at the end, on request, and when any rank was asked to stop (all
    // ranks agree at this step boundary, so they all checkpoint the same step).
    MaybeRaiseForTest(step + 1, grid.world_rank, false);
    const auto requests = preemption.OnAnyRank(*grid.world);
    const bool preempt = !last && requests.stop;
    const bool periodic = rs.checkpoint_interval() > 0 && (step + 1) % rs.checkpoint_interval() == 0;
    // keep_checkpoints 0 (sweeps that only need the metrics): checkpoints only carry an
    // unfinished run, so the last step writes none.
    const bool final_checkpoint = last && rs.keep_checkpoints() > 0;
    if (periodic || final_checkpoint || preempt || requests.checkpoint)
      if (auto s = checkpoint(); !s.ok()) return s;
    if (preempt) {
      result.status = "preempted";
      break;
    }
  }
  result.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_s = state.train_time_s > 0 ? tokens_per_step * result.steps / state.train_time_s : 0;
  if (result.status == "preempted") {
    if (auto s = write([&](RunDirectory& d) { return d.SetStatus("preempted"); }); !s.ok()) return s;
    if (talk)
      std::printf("gdn train: preempted after step %lld; checkpointed, run again to resume\n",
                  static_cast<long long>(result.steps));
    failed_status.armed = false;
    return result;
  }
  JsonLine summary;
  summary.Add("status", result.status).Add("steps", result.steps);
  summary.Add("train_loss", result.train_loss).Add("val_loss", result.val_loss);
  summary.Add("tokens", result.steps * tokens_per_step).Add("tokens_per_s", result.tokens_per_s);
  summary.Add("elapsed_s", state.train_time_s).Add("parameters", model.params().NumElements());
  summary.Add("ranks", grid.world_size).Add("tensor_parallel", grid.tp_size);
  summary.Add("device", device_name);
  if (auto s = write([&](RunDirectory& d) {
        if (auto s = d.WriteFile("summary.json", summary.str() + "\n"); !s.ok()) return s;
        if (auto s = d.SetStatus(result.status); !s.ok()) return s;
        failed_status.armed = false;  // finished, whatever becomes of the checkpoints
        return rs.keep_checkpoints() == 0 ? RemoveCheckpoints(rs.dir()) : absl::OkStatus();
      });
      !s.ok())
    return s;
  result.stop_requested = preemption.OnAnyRank(*grid.world).stop;
  if (talk)
    std::printf("gdn train: %s after %lld steps | train %.4f | val %.4f | %s\n",
                result.status.c_str(), static_cast<long long>(result.steps), result.train_loss,
                result.val_loss, Duration(result.elapsed_s).c_str());
  return result;
}

}  // namespace gdn
