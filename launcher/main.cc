// gdn: one binary, with verbs. `gdn help` lists them; `gdn VERB --help` shows a verb's flags.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "launcher/bench.h"
#include "launcher/coord_check_command.h"
#include "launcher/cli.h"
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
  if (LauncherRank() == 0)
    std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return code;
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

int Sweep(const ParsedArgs& args, bool run) {
  auto spec = ResolveSpec(args.Get("spec"), args.GetAll("set"));
  if (!spec.ok()) return Fail(spec.status());
  auto points = PlanSweep(*spec);
  if (!points.ok()) return Fail(points.status());
  if (!run) {
    std::printf("%s", DescribePlan(*points).c_str());
    return kExitOk;
  }
  SweepOptions options;
  auto ranks = args.GetInt("ranks");
  if (!ranks.ok() || *ranks < 0)
    return Fail(absl::InvalidArgumentError("gdn sweep run: --ranks must be a whole number >= 0"));
  options.ranks_per_run = static_cast<int>(*ranks);
  // In-process runs use this job's ranks; runs started as their own jobs need none here.
  auto grid = ProcessGrid::Create(options.ranks_per_run > 0 ? 1 : spec->parallel().tensor_parallel());
  if (!grid.ok()) return Fail(grid.status());
  const bool talk = grid->world_rank == 0;
  if (talk)
    std::printf("gdn sweep run: %zu runs under %s\n", points->size(), spec->sweep().dir().c_str());
  const std::vector<SweepResult> results = RunSweep(*points, *grid, options);
  const std::string table = SweepTable(results);
  if (talk) std::printf("%s", table.c_str());
  auto dir = RunDirectory::Open(spec->sweep().dir());
  if (talk && dir.ok()) {
    (void)dir->WriteFile("results.csv", SweepCsv(results));
    (void)dir->WriteFile("table.txt", table);
    std::printf("\nwrote %s/results.csv and %s/table.txt\n", spec->sweep().dir().c_str(),
                spec->sweep().dir().c_str());
  }
  for (const SweepResult& r : results)
    if (r.status == "failed") return kExitFailure;
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
                            {"batch", &o.batch}, {"iters", &o.iters}}) {
    auto v = args.GetInt(flag);
    if (!v.ok()) return Fail(v.status());
    if (*v <= 0) return Fail(absl::InvalidArgumentError(std::string("--") + flag + " must be > 0"));
    *slot = static_cast<int>(*v);
  }
  o.sequential = args.GetBool("sequential");
  if (auto s = RunBench(o); !s.ok()) return Fail(s);
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
       [](const ParsedArgs& a) { return Sweep(a, false); }},
      {{"sweep run",
        "Run every point of the spec's sweep grid (skipping finished ones), then print the final "
        "validation loss per width and learning rate and the best learning rate per width.",
        {kSpecFlag, kSetFlag,
         {"ranks", "run each point as its own `mpirun -np N gdn train` job (0: in this process)",
          "0"}}},
       [](const ParsedArgs& a) { return Sweep(a, true); }},
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
      {{"bench", "Measure CPU training throughput against the machine's sgemm rate.",
        {{"width", "model width", "512"},
         {"depth", "layers", "4"},
         {"seq", "sequence length", "512"},
         {"batch", "sequences per step", "4"},
         {"iters", "timed steps", "3"},
         {"sequential", "time the sequential recurrence", "", false, false, true}}},
       Bench},
  };
}

void PrintHelp() {
  std::printf("gdn: width-scaling experiments on Gated DeltaNet language models\n\nverbs:\n");
  for (const Verb& v : Verbs())
    std::printf("  gdn %-14s %s\n", v.command.name.c_str(), v.command.summary.c_str());
  std::printf("\n`gdn VERB --help` shows a verb's flags.\n");
}

}  // namespace
}  // namespace gdn

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
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
