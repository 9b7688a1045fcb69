// gdn: one binary, with verbs. `gdn help` lists them; `gdn VERB --help` shows a verb's flags.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "launcher/bench.h"
#include "launcher/coord_check_command.h"
#include "launcher/plot.h"
#include "launcher/cli.h"
#include "launcher/model_io.h"
#include "launcher/slurm.h"
#include "launcher/sweep.h"
#include "launcher/trainer.h"
#include "runtime/mpi_communicator.h"
#include "runtime/run_dir.h"
#include "runtime/text_corpus.h"

namespace gdn {
namespace {

const Flag kSpecFlag{"spec", "experiment spec (protobuf text format, proto/gdn.proto)", "", true};
const Flag kSetFlag{"set", "override a spec field: --set model.width=256 (lists: a,b,c)", "", false,
                    true};

// This process's rank in an mpirun/srun job (0 otherwise), known before MPI starts: only rank 0
// reports errors, which every rank finds alike.
int LauncherRank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

int Fail(const absl::Status& status, int code = kExitUsage) {
  if (LauncherRank() == 0) {
    std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
    std::fflush(stderr);
  }
  AwaitAllRanksBeforeExit();
  return code;
}

// A floating-point flag's value; absl::SimpleAtod also reads "nan" and "inf", which no flag means.
absl::StatusOr<double> FiniteFlag(const ParsedArgs& args, const std::string& name) {
  double v = 0;
  if (!absl::SimpleAtod(args.Get(name), &v) || !std::isfinite(v))
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": not a finite number: '", args.Get(name), "'"));
  return v;
}

int Train(const ParsedArgs& args) {
  auto spec = ResolveSpec(args.Get("spec"), args.GetAll("set"));
  if (!spec.ok()) return Fail(spec.status());
  auto grid = ProcessGrid::Create(spec->parallel().tensor_parallel());
  if (!grid.ok()) return Fail(grid.status());
  TrainOptions options;
  options.quiet = args.GetBool("quiet");
  options.restart = args.GetBool("restart");
  auto result = gdn::Train(*spec, *grid, options);
  if (!result.ok()) {
    // Bad spec, data or layout is found before computing (exit 2); a failure mid-run is exit 1.
    const absl::StatusCode code = result.status().code();
    return Fail(result.status(),
                code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kAlreadyExists
                    ? kExitUsage
                    : kExitFailure);
  }
  if (result->status == "preempted") return kExitPreempted;
  return result->status == "diverged" ? kExitDiverged : kExitOk;
}

// The spec of a sweep verb with its points, all validated before anything is written.
struct SweepPlan {
  ExperimentSpec spec;
  std::vector<GridPoint> points;
};
// `reading`: the verb only reads the run directories (status, report), so data files that have
// moved since do not stop it.
absl::StatusOr<SweepPlan> LoadSweep(const ParsedArgs& args, bool reading = false) {
  auto spec = ResolveSpec(args.Get("spec"), args.GetAll("set"), !reading);
  if (!spec.ok()) return spec.status();
  auto points = PlanSweep(*spec, !reading);
  if (!points.ok()) return points.status();
  return SweepPlan{*std::move(spec), *std::move(points)};
}

// Writes the report files into sweep.dir and says where; plots only when gnuplot is there.
absl::Status Report(const SweepPlan& plan, const std::vector<SweepResult>& results, bool plots) {
  auto files = WriteSweepReport(plan.spec.sweep().dir(), results, plots);
  if (!files.ok()) return files.status();
  std::vector<std::string> shown;  // not gnuplot's inputs under plots/
  for (const std::string& f : files->written)
    if (f.find("/plots/") == std::string::npos) shown.push_back(f);
  std::printf("\nwrote %s\n", absl::StrJoin(shown, ", ").c_str());
  return absl::OkStatus();
}

int SweepPlanVerb(const ParsedArgs& args) {
  auto plan = LoadSweep(args);
  if (!plan.ok()) return Fail(plan.status());
  std::printf("%s", DescribePlan(plan->points).c_str());
  return kExitOk;
}

int SweepRun(const ParsedArgs& args) {
  auto plan = LoadSweep(args);
  if (!plan.ok()) return Fail(plan.status());
  SweepOptions options;
  auto ranks = args.GetInt("ranks");
  if (!ranks.ok() || *ranks < 0)
    return Fail(absl::InvalidArgumentError("gdn sweep run: --ranks must be a whole number >= 0"));
  auto parallel = args.GetInt("parallel");
  if (!parallel.ok() || *parallel < 1)
    return Fail(absl::InvalidArgumentError("gdn sweep run: --parallel must be a whole number >= 1"));
  options.ranks_per_run = static_cast<int>(*ranks);
  options.parallel = static_cast<int>(*parallel);
  auto gpus = args.GetInt("gpus");
  if (!gpus.ok() || *gpus < 0)
    return Fail(absl::InvalidArgumentError("gdn sweep run: --gpus must be a whole number >= 0"));
  options.gpus = static_cast<int>(*gpus);
  if (options.gpus > 0 && std::max(1, options.ranks_per_run) > options.gpus)
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "gdn sweep run: --gpus ", options.gpus, " is fewer than the ", options.ranks_per_run,
        " ranks of a run (one GPU per rank)")));
  // In-process runs use this job's ranks; runs started as their own processes need none here.
  const bool in_process = options.ranks_per_run == 0 && options.parallel == 1 && options.gpus == 0;
  auto grid = ProcessGrid::Create(in_process ? plan->spec.parallel().tensor_parallel() : 1);
  if (!grid.ok()) return Fail(grid.status());
  const bool talk = grid->world_rank == 0;
  if (talk)
    std::printf("gdn sweep run: %zu runs under %s\n", plan->points.size(),
                plan->spec.sweep().dir().c_str());
  bool preempted = false;
  const std::vector<SweepResult> results = RunSweep(plan->points, *grid, options, &preempted);
  if (talk) {
    std::printf("%s", SweepTable(results).c_str());
    if (!HaveGnuplot()) std::printf("\n(no plots: gnuplot is not installed)\n");
    if (auto s = Report(*plan, results, HaveGnuplot()); !s.ok()) return Fail(s, kExitFailure);
  }
  for (const SweepResult& r : results) {
    if (r.status == "failed" || r.status == "running") return kExitFailure;  // running: elsewhere
    preempted |= r.status == "preempted";
  }
  if (preempted && talk)
    std::printf("gdn sweep run: preempted; the same command resumes the sweep\n");
  return preempted ? kExitPreempted : kExitOk;
}

int SweepStatus(const ParsedArgs& args) {
  auto plan = LoadSweep(args, /*reading=*/true);
  if (!plan.ok()) return Fail(plan.status());
  std::printf("%s", SweepStatusTable(ReadRuns(plan->points)).c_str());
  return kExitOk;
}

int SweepReport(const ParsedArgs& args) {
  auto plan = LoadSweep(args, /*reading=*/true);
  if (!plan.ok()) return Fail(plan.status());
  if (!HaveGnuplot())
    return Fail(absl::FailedPreconditionError(
                    "gnuplot: not on the PATH (apt-get install gnuplot-nox; launcher/setup.sh "
                    "installs it)"),
                kExitFailure);
  const std::vector<SweepResult> results = ReadRuns(plan->points);
  std::printf("%s%s", SweepStatusTable(results).c_str(), SweepTable(results).c_str());
  if (auto s = Report(*plan, results, true); !s.ok()) return Fail(s, kExitFailure);
  return kExitOk;
}

// `gdn sweep slurm` flags that stand for a field of the spec's slurm block.
const std::vector<std::pair<Flag, std::string>>& SlurmFlags() {
  static const auto* flags = new std::vector<std::pair<Flag, std::string>>{
      {{"max-running", "array tasks at once (%N); 0: no limit"}, "slurm.max_running"},
      {{"ntasks", "ranks per run (sbatch --ntasks)"}, "slurm.ntasks"},
      {{"launcher", "command starting a run's ranks, e.g. 'srun --mpi=pmix', 'mpirun'; '': none"},
       "slurm.launcher"},
      {{"nodes", "sbatch --nodes per run"}, "slurm.nodes"},
      {{"cpus-per-task", "sbatch --cpus-per-task (also OMP_NUM_THREADS)"}, "slurm.cpus_per_task"},
      {{"time", "sbatch --time per task, e.g. 04:00:00"}, "slurm.time"},
      {{"partition", "sbatch --partition"}, "slurm.partition"},
      {{"account", "sbatch --account"}, "slurm.account"},
      {{"signal-seconds", "SIGUSR2 this long before the time limit: checkpoint and requeue"},
       "slurm.signal_seconds"},
  };
  return *flags;
}

int SweepSlurm(const ParsedArgs& args) {
  std::vector<std::string> overrides;
  for (const auto& [flag, field] : SlurmFlags())
    if (!args.GetAll(flag.name).empty())
      overrides.push_back(absl::StrCat(field, "=", args.Get(flag.name)));
  auto spec = ResolveSpec(args.Get("spec"), [&] {
    std::vector<std::string> all = args.GetAll("set");
    all.insert(all.end(), overrides.begin(), overrides.end());
    return all;
  }());
  if (!spec.ok()) return Fail(spec.status());
  for (const std::string& line : args.GetAll("sbatch")) spec->mutable_slurm()->add_sbatch(line);
  if (auto s = ValidateSpec(*spec); !s.ok()) return Fail(s);
  auto points = PlanSweep(*spec);
  if (!points.ok()) return Fail(points.status());
  const bool submit = args.GetBool("submit");
  auto job = PrepareSlurm(*spec, *points, submit);
  if (!job.ok())
    return Fail(job.status(), job.status().code() == absl::StatusCode::kInvalidArgument
                                  ? kExitUsage
                                  : kExitFailure);
  if (job->tasks.empty()) {
    std::printf("gdn sweep slurm: all %zu runs are finished; nothing to run\n", points->size());
    return kExitOk;
  }
  std::printf("gdn sweep slurm: %zu of %zu runs to run: %s\n", job->tasks.size(), points->size(),
              job->script_path.c_str());
  // Two jobs on one run directory would both write it: say which runs may still be alive.
  std::vector<std::string> running;
  for (size_t i : job->tasks)
    if (ReadRun((*points)[i]).status == "running") running.push_back((*points)[i].id);
  if (!running.empty())
    std::printf("note: %zu runs are marked running (%s); if a job still runs them, cancel it before "
                "this one starts them (they resume from their checkpoints)\n",
                running.size(), absl::StrJoin(running, ", ").c_str());
  if (submit)
    std::printf("submitted job array %s (follow it with gdn sweep status --spec %s)\n",
                job->job_id.c_str(), args.Get("spec").c_str());
  else
    std::printf("submit it with: sbatch %s\n", job->script_path.c_str());
  return kExitOk;
}

int DataPrepare(const ParsedArgs& args) {
  CorpusOptions options;
  options.input_dir = args.Get("input");
  options.format = args.Get("format");
  options.out_dir = args.Get("out");
  auto every = args.GetInt("val-every");
  if (!every.ok()) return Fail(every.status());
  options.val_every = static_cast<int>(*every);
  std::string summary;
  if (auto s = PrepareCorpus(options, &summary); !s.ok()) return Fail(s);
  std::printf("%s\n", summary.c_str());
  return kExitOk;
}

int Bench(const ParsedArgs& args) {
  BenchOptions o;
  for (auto [flag, slot] : {std::pair{"width", &o.width}, {"depth", &o.depth}, {"seq", &o.seq_len},
                            {"batch", &o.batch}, {"iters", &o.iters}, {"head-dim", &o.head_dim},
                            {"vocab", &o.vocab}}) {
    auto v = args.GetInt(flag);
    if (!v.ok()) return Fail(v.status());
    if (*v <= 0) return Fail(absl::InvalidArgumentError(std::string("--") + flag + " must be > 0"));
    *slot = static_cast<int>(*v);
  }
  o.sequential = args.GetBool("sequential");
  const std::string device = args.Get("device");
  if (device != "cpu" && device != "cuda")
    return Fail(absl::InvalidArgumentError("--device: '" + device + "' (use cpu or cuda)"));
  o.cuda = device == "cuda";
  const std::string precision = args.Get("precision");
  if (precision != "fp32" && precision != "bf16")
    return Fail(absl::InvalidArgumentError("--precision: '" + precision + "' (use fp32 or bf16)"));
  o.bf16 = precision == "bf16";
  auto tp = args.GetInt("tp");
  if (!tp.ok()) return Fail(tp.status());
  if (*tp <= 0) return Fail(absl::InvalidArgumentError("--tp must be > 0"));
  o.tensor_parallel = static_cast<int>(*tp);
  o.zero = args.GetBool("zero");
  o.recompute = args.GetBool("recompute");
  o.save_recurrence = args.GetBool("save-recurrence");
  auto bucket_mb = FiniteFlag(args, "bucket-mb");
  if (!bucket_mb.ok() || !(*bucket_mb > 0))
    return Fail(absl::InvalidArgumentError("--bucket-mb: '" + args.Get("bucket-mb") +
                                           "' (use a number of MiB > 0)"));
  o.bucket_mb = *bucket_mb;
  if (auto s = RunBench(o); !s.ok()) return Fail(s);
  return kExitOk;
}

int BenchCollective(const ParsedArgs& args) {
  CollectiveBenchOptions o;
  for (auto [flag, slot, least] : {std::tuple{"iters", &o.iters, 1}, {"warmup", &o.warmup, 0}}) {
    auto v = args.GetInt(flag);
    if (!v.ok()) return Fail(v.status());
    if (*v < least || *v > 1000000)
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--%s: %d is not a count from %d to 1000000", flag, *v, least)));
    *slot = static_cast<int>(*v);
  }
  const std::string device = args.Get("device");
  if (device != "cpu" && device != "cuda")
    return Fail(absl::InvalidArgumentError("--device: '" + device + "' (use cpu or cuda)"));
  o.cuda = device == "cuda";
  const std::string op = args.Get("op");
  if (op == "allreduce") o.op = Collective::kAllReduce;
  else if (op == "reducescatter") o.op = Collective::kReduceScatter;
  else if (op == "allgather") o.op = Collective::kAllGather;
  else
    return Fail(absl::InvalidArgumentError(
        "--op: '" + op + "' (use allreduce, reducescatter or allgather)"));
  if (auto s = ParseCollectiveSizes(args.Get("sizes"), &o.sizes_mib); !s.ok()) return Fail(s);
  if (auto s = RunCollectiveBench(o); !s.ok())
    return Fail(s, s.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure);
  return kExitOk;
}

int CoordCheck(const ParsedArgs& args) {
  auto spec = ResolveSpec(args.Get("spec"), args.GetAll("set"));
  if (!spec.ok()) return Fail(spec.status());
  auto steps = args.GetInt("steps");
  if (!steps.ok()) return Fail(steps.status());
  auto options = ParseCoordCheckFlags(args.Get("widths"), static_cast<int>(*steps),
                                      args.Get("parametrizations"), args.Get("optimizers"),
                                      args.Get("adamw-lr"), args.Get("sgd-lr"), args.Get("out"));
  if (!options.ok()) return Fail(options.status());
  if (auto s = RunCoordCheckCommand(*spec, *options); !s.ok())
    return Fail(s, s.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure);
  return kExitOk;
}

// --step N, when given.
absl::StatusOr<std::optional<int64_t>> StepFlag(const ParsedArgs& args) {
  if (args.Get("step").empty()) return std::optional<int64_t>();
  auto step = args.GetInt("step");
  if (!step.ok()) return step.status();
  if (*step < 0) return absl::InvalidArgumentError("--step: must be >= 0");
  return std::optional<int64_t>(*step);
}

// User errors (bad flags, files, directories) exit 2; anything else is a failure while running.
int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:  // a corrupt input file
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

int PrintLines(const absl::StatusOr<std::vector<std::string>>& lines) {
  if (!lines.ok()) return Fail(lines.status(), ExitCodeFor(lines.status()));
  for (const std::string& l : *lines) std::printf("%s\n", l.c_str());
  return kExitOk;
}

int Export(const ParsedArgs& args) {
  auto step = StepFlag(args);
  if (!step.ok()) return Fail(step.status());
  return PrintLines(ExportRun(args.Get("run"), *step, args.Get("out")));
}

int Import(const ParsedArgs& args) {
  return PrintLines(ImportRun(args.Get("from"), args.Get("run"), args.GetAll("set")));
}

int Eval(const ParsedArgs& args) {
  EvalOptions o;
  auto step = StepFlag(args);
  if (!step.ok()) return Fail(step.status());
  o.step = *step;
  o.data = args.Get("data");
  o.logits_out = args.Get("logits-out");
  if (!args.Get("batches").empty()) {
    auto b = args.GetInt("batches");
    if (!b.ok()) return Fail(b.status());
    if (*b < 0) return Fail(absl::InvalidArgumentError("--batches: must be >= 0"));
    o.batches = *b;
  }
  auto r = EvalRun(args.Get("run"), o);
  if (!r.ok()) return Fail(r.status(), ExitCodeFor(r.status()));
  const std::string bpb =
      std::isnan(r->bits_per_byte)
          ? "bits per byte unknown (tokens are not bytes: vocabulary is not 256)"
          : absl::StrFormat("%.6f bits/byte", r->bits_per_byte);
  std::printf("gdn eval: %s step %lld on %s: loss %.9g nats/token over %lld tokens | %s\n",
              args.Get("run").c_str(), static_cast<long long>(r->step), r->data.c_str(), r->loss,
              static_cast<long long>(r->tokens), bpb.c_str());
  return kExitOk;
}

int Sample(const ParsedArgs& args) {
  SampleOptions o;
  auto step = StepFlag(args);
  if (!step.ok()) return Fail(step.status());
  o.step = *step;
  o.prompt = args.Get("prompt");
  for (auto [flag, slot] : {std::pair{"max-tokens", &o.max_tokens}, {"top-k", &o.top_k}}) {
    auto v = args.GetInt(flag);
    if (!v.ok()) return Fail(v.status());
    *slot = *v;
  }
  auto seed = args.GetInt("seed");
  if (!seed.ok()) return Fail(seed.status());
  o.seed = static_cast<uint64_t>(*seed);
  auto temperature = FiniteFlag(args, "temperature");
  if (!temperature.ok()) return Fail(temperature.status());
  o.temperature = *temperature;
  auto text = SampleRun(args.Get("run"), o);
  if (!text.ok()) return Fail(text.status(), ExitCodeFor(text.status()));
  std::printf("%s%s\n", o.prompt.c_str(), text->c_str());
  return kExitOk;
}

struct Verb {
  Command command;
  std::function<int(const ParsedArgs&)> run;
};

std::vector<Verb> Verbs() {
  return {
      {{"train", "Train one model as the spec says into its run directory (run.dir), resuming from the newest "
        "complete checkpoint there. Exit 0 done, 3 diverged, 4 preempted (checkpointed: run again).",
        {kSpecFlag, kSetFlag, {"quiet", "no progress lines", "", false, false, true},
         {"restart",
          "discard what run.dir holds (metrics, checkpoints) and start over; without it a run "
          "resumes from its newest complete checkpoint",
          "", false, false, true}}},
       Train},
      {{"sweep plan", "List the runs of the spec's sweep grid and what each costs.",
        {kSpecFlag, kSetFlag}},
       SweepPlanVerb},
      {{"sweep run",
        "Run every point of the spec's sweep grid (finished ones are skipped, interrupted ones "
        "resume), then print the final validation loss per width and swept value (the learning rate, "
        "or the sweep's numeric axis when the lr is single) and the best value per width, and "
        "write the report into sweep.dir.",
        {kSpecFlag, kSetFlag,
         {"ranks", "run each point as its own `mpirun -np N gdn train` job (0: in this process)",
          "0"},
         {"parallel", "runs at once, each its own process (cores shared out among them)", "1"},
         {"gpus",
          "GPUs of this node to share out: each run's ranks get their own (CUDA_VISIBLE_DEVICES), "
          "runs beyond the GPUs share them (0: leave CUDA_VISIBLE_DEVICES alone)",
          "0"}}},
       SweepRun},
      {{"sweep status",
        "A line per run of the sweep: state, step, last training and validation loss.",
        {kSpecFlag, kSetFlag}},
       SweepStatus},
      {{"sweep report",
        "From the run directories (any time, finished or not): sweep.dir/results.csv, "
        "best_lr.csv, table.txt, <axis>_sweep.png (lr_sweep.png for lr grids) and curves.png "
        "(gnuplot).",
        {kSpecFlag, kSetFlag}},
       SweepReport},
      {{"sweep slurm",
        "Write sweep.dir/slurm/sweep.sbatch, a Slurm job array with one task per unfinished "
        "grid point (preempted tasks checkpoint and requeue themselves), and with --submit "
        "submit it. Flags override the spec's slurm block.",
        [] {
          std::vector<Flag> flags = {kSpecFlag, kSetFlag,
                                     {"submit", "submit it with sbatch and print the job id", "",
                                      false, false, true},
                                     {"sbatch", "another sbatch option, e.g. --gpus-per-task=1", "",
                                      false, true}};
          for (const auto& [flag, field] : SlurmFlags()) flags.push_back(flag);
          return flags;
        }()},
       SweepSlurm},
      {{"data prepare",
        "Turn a folder of text into byte-level token shards (llm.c .bin): OUT/train.bin, "
        "OUT/val.bin.",
        {{"input", "folder of documents", "", true},
         {"format", "brown (the Brown Corpus, tags stripped) or text (raw files)", "text"},
         {"out", "output folder", "", true},
         {"val-every", "every N-th document goes to validation", "20"}}},
       DataPrepare},
      {{"coord-check",
        "The muP coordinate check: a few steps at a large learning rate on one batch at each "
        "width; tables, CSV and a PNG per configuration of each module's mean |coordinate|.",
        {kSpecFlag, kSetFlag,
         {"widths", "comma-separated widths", "64,128,256,512"},
         {"steps", "updates after the initial measurement", "3"},
         {"parametrizations", "MUP and/or SP", "MUP,SP"},
         {"optimizers", "ADAMW and/or SGD", "ADAMW,SGD"},
         {"adamw-lr", "AdamW learning rate (default: optimizer.lr)", ""},
         {"sgd-lr", "SGD learning rate (default: optimizer.lr)", ""},
         {"out", "output folder", "runs/coord_check"}}},
       CoordCheck},
      // Before "bench": the first verb whose words lead the arguments runs.
      {{"bench allreduce",
        "Time one collective alone over this job's ranks (start it with mpirun or srun): per "
        "message size the median and minimum time, algorithm and bus bandwidth (nccl-tests' "
        "convention), each size's result checked first.",
        {{"device", "cpu (MPI) or cuda (NCCL, one GPU per rank)", "cpu"},
         {"sizes", "message sizes in MiB (the full float32 buffer), comma-separated",
          "1,4,16,64,256"},
         {"iters", "timed iterations per size", "20"},
         {"warmup", "untimed iterations per size before them", "5"},
         {"op", "allreduce, reducescatter or allgather", "allreduce"}}},
       BenchCollective},
      {{"bench",
        "Measure training throughput (CPU or GPU, one rank or an mpirun/srun job) with a per-op "
        "time breakdown.",
        {{"width", "model width", "512"},
         {"depth", "layers", "4"},
         {"seq", "sequence length", "512"},
         {"batch", "sequences per step", "4"},
         {"iters", "timed steps", "3"},
         {"head-dim", "key head size dk (dv = 2 dk)", "64"},
         {"vocab", "vocabulary size", "256"},
         {"device", "cpu or cuda", "cpu"},
         {"precision", "fp32, or bf16 (GPU matrix products on bf16 tensor cores)", "fp32"},
         {"sequential", "time the sequential recurrence", "", false, false, true},
         {"tp", "tensor-parallel size under mpirun/srun (ranks / tp data-parallel ranks, each "
                "running --batch sequences)", "1"},
         {"zero", "ZeRO-1: shard the optimizer state over the data-parallel ranks", "", false,
          false, true},
         {"bucket-mb", "data-parallel gradient bucket size in MiB", "25"},
         {"recompute", "recompute each layer's activations in the backward (less memory)", "",
          false, false, true},
         {"save-recurrence", "keep the recurrence's chunk states from the forward for the "
                             "backward (CUDA only; faster, more memory)", "", false, false, true}}},
       Bench},
      {{"export",
        "Write a run's checkpoint as config.json + model.safetensors in the layout of fla's "
        "GatedDeltaNetForCausalLM (muP multipliers folded into the weights).",
        {{"run", "run directory", "", true},
         {"step", "checkpoint step (default: the newest complete one)", ""},
         {"out", "output folder", "", true}}},
       Export},
      {{"import",
        "Turn an exported model folder into a new run directory (spec.textproto + a step-0 "
        "checkpoint) to train further or evaluate.",
        {{"from", "folder with config.json and model.safetensors", "", true},
         {"run", "new run directory", "", true}, kSetFlag}},
       Import},
      {{"eval", "Validation loss and bits per byte of a run's checkpoint on a token shard.",
        {{"run", "run directory", "", true},
         {"step", "checkpoint step (default: the newest complete one)", ""},
         {"data", "token shard or glob (default: the spec's data.val_path)", ""},
         {"batches", "batches of data.batch_size windows (default: run.eval_batches; 0: all)",
          ""},
         {"logits-out", "also write the first batch's tokens and logits to this safetensors file",
          ""}}},
       Eval},
      {{"sample",
        "Continue a text prompt with a byte-level model, one token at a time with the recurrent "
        "state (greedy, or temperature / top-k sampling).",
        {{"run", "run directory", "", true},
         {"step", "checkpoint step (default: the newest complete one)", ""},
         {"prompt", "text to continue", "", true},
         {"max-tokens", "tokens to generate", "200"},
         {"temperature", "0: greedy; > 0: sample from softmax(logits / temperature)", "0"},
         {"top-k", "sample among the k most likely tokens (0: all)", "0"},
         {"seed", "sampling seed", "0"}}},
       Sample},
  };
}

void PrintHelp() {
  std::printf("gdn: width-scaling experiments on Gated DeltaNet language models\n\nverbs:\n");
  for (const Verb& v : Verbs())
    std::printf("  gdn %-15s %s\n", v.command.name.c_str(), v.command.summary.c_str());
  std::printf("\n`gdn VERB --help` shows a verb's flags.\n");
}

}  // namespace
}  // namespace gdn

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, which the writer reports naming
  // the file, rather than kill the process without a word.
  std::signal(SIGXFSZ, SIG_IGN);
  FLAGS_logtostderr = true;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    gdn::PrintHelp();
    return args.empty() ? gdn::kExitUsage : gdn::kExitOk;
  }
  for (const gdn::Verb& verb : gdn::Verbs()) {
    // A verb is one or two words ("train", "sweep run").
    const std::vector<std::string> words = absl::StrSplit(verb.command.name, ' ');
    if (args.size() < words.size() || !std::equal(words.begin(), words.end(), args.begin()))
      continue;
    auto parsed = gdn::ParsedArgs::Parse(
        verb.command, std::vector<std::string>(args.begin() + words.size(), args.end()));
    if (!parsed.ok()) return gdn::Fail(parsed.status());
    if (parsed->help()) {
      std::printf("%s", verb.command.Usage().c_str());
      return gdn::kExitOk;
    }
    const int code = verb.run(*parsed);
    gdn::FinalizeMpi();
    return code;
  }
  std::fprintf(stderr, "error: unknown verb '%s' (see gdn help)\n",
               absl::StrJoin(args.begin(), args.begin() + std::min<size_t>(2, args.size()), " ").c_str());
  return gdn::kExitUsage;
}
