// Sweep read-back (status, best-learning-rate tables, CSV, report with plots) on run directories
// written here by hand, and the Slurm batch script's contents.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "launcher/slurm.h"
#include "launcher/plot.h"
#include "launcher/sweep.h"
#include "runtime/run_dir.h"
#include "runtime/spec.h"

namespace gdn {
namespace {

class SweepReadBack : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("gdn_sweep_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // SP and muP x widths 32, 64 x learning rates 0.01, 0.02, 0.04, 0.08, or the given sweep lists.
  std::vector<GridPoint> Grid(
      const std::string& lists =
          "parametrizations: [SP, MUP] widths: [32, 64] learning_rates: [0.01, 0.02, 0.04, 0.08]") {
    auto spec = ParseSpecText(
        absl::StrCat("run { steps: 10 } sweep { ", lists, " dir: \"", dir_.string(), "\" }"), "test");
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto points = ExpandGrid(*spec);
    EXPECT_TRUE(points.ok()) << points.status();
    return *points;
  }
  static const GridPoint& Find(const std::vector<GridPoint>& points, const std::string& kind,
                               int width, double lr) {
    for (const GridPoint& p : points)
      if (ParametrizationSpec::Kind_Name(p.spec.parametrization().kind()) == kind &&
          p.spec.model().width() == width && p.spec.optimizer().lr() == lr)
        return p;
    ADD_FAILURE() << "no point " << kind << " " << width << " " << lr;
    return points.front();
  }
  // The point whose assignments include all of `assignments`.
  static const GridPoint& FindWith(const std::vector<GridPoint>& points,
                                   const std::vector<std::string>& assignments) {
    for (const GridPoint& p : points)
      if (std::all_of(assignments.begin(), assignments.end(), [&](const std::string& a) {
            return std::count(p.assignments.begin(), p.assignments.end(), a) == 1;
          }))
        return p;
    ADD_FAILURE() << "no point " << absl::StrJoin(assignments, " ");
    return points.front();
  }
  // A run as the trainer leaves it: `steps` metric lines (loss falling to `final`), a val_loss at
  // the last one, and for done/diverged a summary.
  static void WriteRun(const GridPoint& p, const std::string& status, int steps, double final) {
    auto dir = RunDirectory::Open(p.spec.run().dir());
    ASSERT_TRUE(dir.ok());
    ASSERT_TRUE(dir->SetStatus(status).ok());
    for (int s = 1; s <= steps; ++s) {
      JsonLine line;
      line.Add("step", s).Add("train_loss", final + (steps - s)).Add("lr", 0.01);
      line.Add("grad_norm", 1.0).Add("tokens_per_s", 1000.0).Add("tokens", s * 128);
      if (s == steps && status != "diverged") line.Add("val_loss", final + 0.5);
      ASSERT_TRUE(dir->AppendLine("metrics.jsonl", line.str()).ok());
    }
    if (status == "done" || status == "diverged") {
      JsonLine summary;
      summary.Add("status", status).Add("steps", steps).Add("train_loss", final);
      summary.Add("val_loss", status == "done" ? final + 0.5 : NAN).Add("tokens_per_s", 900.0);
      ASSERT_TRUE(dir->WriteFile("summary.json", summary.str() + "\n").ok());
    }
  }
  std::string Read(const std::string& name) {
    std::ifstream in(dir_ / name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::filesystem::path dir_;
};

// The best value at each evaluation: which learning rate leads can change as training goes on;
// a diverged or unfinished cell never competes, and seeds are averaged.
TEST_F(SweepReadBack, SettlingTableFollowsTheLeaderAtEachEvaluation) {
  const auto points = Grid("widths: [32] learning_rates: [0.01, 0.02, 0.04] seeds: [1, 2]");
  // val at steps 2 and 4: lr 0.01 leads at step 2, lr 0.02 at step 4 (seed means).
  auto write = [&](double lr, uint64_t seed, double v2, double v4, const std::string& status) {
    const GridPoint* p = nullptr;
    for (const GridPoint& q : points)
      if (q.spec.optimizer().lr() == lr && q.spec.run().seed() == seed) p = &q;
    ASSERT_NE(p, nullptr);
    auto dir = RunDirectory::Open(p->spec.run().dir());
    ASSERT_TRUE(dir.ok());
    ASSERT_TRUE(dir->SetStatus(status).ok());
    for (int s = 1; s <= 4; ++s) {
      JsonLine line;
      line.Add("step", s).Add("train_loss", 3.0);
      if (s == 2) line.Add("val_loss", v2);
      if (s == 4) line.Add("val_loss", v4);
      ASSERT_TRUE(dir->AppendLine("metrics.jsonl", line.str()).ok());
    }
  };
  write(0.01, 1, 2.0, 1.9, "done");
  write(0.01, 2, 2.2, 1.9, "done");   // mean 2.1, 1.9
  write(0.02, 1, 2.15, 1.7, "done");
  write(0.02, 2, 2.15, 1.7, "done");  // mean 2.15, 1.7
  write(0.04, 1, 1.0, 1.0, "done");
  write(0.04, 2, 1.0, 1.0, "running");  // lowest, but a seed is unfinished: not a contender
  const std::string table = SettlingTable(ReadRuns(points));
  EXPECT_TRUE(absl::StrContains(table, "best lr at each evaluation: all runs")) << table;
  EXPECT_TRUE(absl::StrContains(table, "   width          2          4\n")) << table;
  EXPECT_TRUE(absl::StrContains(table, "      32       0.01       0.02\n")) << table;
}

// "running" is believed only while a trainer holds the run directory's lock; a dead one's run reads
// as interrupted (and a directory without a lock file, from an older gdn, as running).
TEST_F(SweepReadBack, RunningWithoutItsTrainerIsInterrupted) {
  const auto points = Grid();
  const GridPoint& p = Find(points, "SP", 64, 0.01);
  WriteRun(p, "running", 4, 3.0);
  EXPECT_EQ(ReadRun(p).status, "running");  // no lock file
  auto dir = RunDirectory::Open(p.spec.run().dir());
  ASSERT_TRUE(dir.ok());
  {
    auto lock = dir->TryLock();
    ASSERT_TRUE(lock.ok()) << lock.status();
    EXPECT_EQ(ReadRun(p).status, "running");
    EXPECT_EQ(dir->IsLocked(), true);
    auto second = dir->TryLock();  // a second trainer is refused, naming this process
    ASSERT_FALSE(second.ok());
    EXPECT_TRUE(absl::StrContains(second.status().message(), absl::StrCat("(pid ", getpid(), ")")))
        << second.status();
  }
  EXPECT_EQ(dir->IsLocked(), false);
  EXPECT_EQ(ReadRun(p).status, "interrupted");
  EXPECT_TRUE(absl::StrContains(SweepStatusTable(ReadRuns(points)), "1 interrupted"));
}

TEST_F(SweepReadBack, StatesOfAPartialSweep) {
  const auto points = Grid();
  WriteRun(Find(points, "SP", 32, 0.01), "done", 10, 2.0);
  WriteRun(Find(points, "SP", 32, 0.08), "diverged", 3, 50.0);
  WriteRun(Find(points, "SP", 64, 0.01), "running", 4, 3.0);
  WriteRun(Find(points, "SP", 64, 0.02), "preempted", 6, 3.0);
  const std::vector<SweepResult> results = ReadRuns(points);
  std::map<std::string, int> states;
  for (const SweepResult& r : results) ++states[r.status];
  EXPECT_EQ(states["done"], 1);
  EXPECT_EQ(states["diverged"], 1);
  EXPECT_EQ(states["running"], 1);
  EXPECT_EQ(states["preempted"], 1);
  EXPECT_EQ(states["pending"], 12);

  const SweepResult running = ReadRun(Find(points, "SP", 64, 0.01));
  EXPECT_EQ(running.step, 4);
  EXPECT_DOUBLE_EQ(running.train_loss, 3.0);
  EXPECT_DOUBLE_EQ(running.val_loss, 3.5);
  EXPECT_GE(running.seconds_since_update, 0);
  const SweepResult diverged = ReadRun(Find(points, "SP", 32, 0.08));
  EXPECT_TRUE(std::isnan(diverged.val_loss));
  EXPECT_EQ(diverged.step, 3);
  // Reading creates nothing.
  EXPECT_FALSE(std::filesystem::exists(Find(points, "MUP", 64, 0.04).spec.run().dir()));

  const std::string table = SweepStatusTable(results);
  EXPECT_TRUE(absl::StrContains(table, "16 runs: 1 done, 1 diverged, 1 running, 1 preempted, 12 pending"))
      << table;
  EXPECT_TRUE(absl::StrContains(table, "4/10")) << table;

  // Unfinished cells show their state; no best learning rate without a done run.
  const std::string loss_table = SweepTable(results);
  EXPECT_TRUE(absl::StrContains(loss_table, "running")) << loss_table;
  EXPECT_TRUE(absl::StrContains(loss_table, "diverged")) << loss_table;
  EXPECT_TRUE(absl::StrContains(loss_table, "pending")) << loss_table;
  EXPECT_EQ(BestLrCsv(results),
            "group,width,axis,best,shift,val_loss\n"
            "parametrization.kind=SP,32,optimizer.lr,0.01,0,2.500000\n");
}

TEST_F(SweepReadBack, BestLearningRateAndShift) {
  const auto points = Grid();
  // SP: width 32 is best at 0.04, width 64 at 0.02 (one grid step left). muP: both at 0.04.
  const std::map<std::pair<int, double>, double> sp = {
      {{32, 0.01}, 3.0}, {{32, 0.02}, 2.5}, {{32, 0.04}, 2.0}, {{64, 0.01}, 2.6},
      {{64, 0.02}, 1.9}, {{64, 0.04}, 2.2}};
  for (const auto& [key, loss] : sp) WriteRun(Find(points, "SP", key.first, key.second), "done", 10, loss);
  WriteRun(Find(points, "SP", 32, 0.08), "diverged", 2, 40);
  WriteRun(Find(points, "SP", 64, 0.08), "diverged", 2, 40);
  for (int w : {32, 64})
    for (double lr : {0.01, 0.02, 0.04, 0.08})
      WriteRun(Find(points, "MUP", w, lr), "done", 10, 2.0 + std::abs(std::log2(lr / 0.04)) - w / 1000.0);
  const std::vector<SweepResult> results = ReadRuns(points);
  EXPECT_EQ(BestLrCsv(results),
            "group,width,axis,best,shift,val_loss\n"
            "parametrization.kind=MUP,32,optimizer.lr,0.04,0,2.468000\n"
            "parametrization.kind=MUP,64,optimizer.lr,0.04,0,2.436000\n"
            "parametrization.kind=SP,32,optimizer.lr,0.04,0,2.500000\n"
            "parametrization.kind=SP,64,optimizer.lr,0.02,-1,2.400000\n");
  const std::string table = SweepTable(results);
  EXPECT_TRUE(absl::StrContains(table, "0.02     -1")) << table;
  const std::string csv = SweepCsv(results);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 17) << csv;
  EXPECT_TRUE(absl::StrContains(
      csv, absl::StrCat(Find(points, "SP", 64, 0.02).id, ",SP,ADAMW,64,0.02,0,done,10,1.900000,2.400000,900.0\n")))
      << csv;
  EXPECT_TRUE(absl::StrContains(
      csv, absl::StrCat(Find(points, "SP", 64, 0.08).id, ",SP,ADAMW,64,0.08,0,diverged,2,40.000000,,900.0\n")))
      << csv;
}

TEST_F(SweepReadBack, ReportWritesCsvTablesAndPngs) {
  if (!HaveGnuplot()) GTEST_SKIP() << "gnuplot is not installed (launcher/setup.sh installs it)";
  const auto points = Grid();
  WriteRun(Find(points, "SP", 32, 0.01), "done", 10, 2.0);
  WriteRun(Find(points, "SP", 32, 0.02), "diverged", 2, 40.0);
  WriteRun(Find(points, "MUP", 64, 0.04), "running", 5, 2.0);  // a muP panel with nothing done
  auto files = WriteSweepReport(dir_.string(), ReadRuns(points), true);
  ASSERT_TRUE(files.ok()) << files.status();
  for (const char* name : {"results.csv", "best_lr.csv", "table.txt", "plots/report.gp"})
    EXPECT_TRUE(std::filesystem::exists(dir_ / name)) << name;
  for (const char* png : {"lr_sweep.png", "curves.png"}) {
    const std::string bytes = Read(png);
    ASSERT_GE(bytes.size(), 1000u) << png;
    EXPECT_EQ(bytes.substr(0, 8), "\x89PNG\r\n\x1a\n") << png;
  }
  // SP left of muP; the diverged point is drawn.
  const std::string gp = Read("plots/report.gp");
  EXPECT_LT(gp.find("set title 'SP'"), gp.find("set title 'MUP'")) << gp;
  EXPECT_TRUE(absl::StrContains(gp, "title 'diverged'")) << gp;
  EXPECT_TRUE(absl::StrContains(gp, "no finished runs yet")) << gp;
}

// Issue 7's init-std transfer check: one learning rate, an init_std axis: init_std is the x-axis.
TEST_F(SweepReadBack, InitStdAxisWithOneLearningRate) {
  const auto points = Grid(R"(parametrizations: [SP, MUP] widths: [32, 64] learning_rates: [0.015625]
      axes { field: "parametrization.init_std" values: ["0.005", "0.01", "0.02", "0.04"] })");
  auto run = [&](const std::string& kind, int width, const std::string& std) -> const GridPoint& {
    return FindWith(points, {"parametrization.kind=" + kind, absl::StrCat("model.width=", width),
                             "parametrization.init_std=" + std});
  };
  // SP: width 32 is best at 0.02, width 64 at 0.01 (one step left; 0.04 diverged). muP: both 0.02.
  const std::map<std::pair<int, std::string>, double> sp = {
      {{32, "0.005"}, 3.0}, {{32, "0.01"}, 2.5}, {{32, "0.02"}, 2.0}, {{32, "0.04"}, 2.2},
      {{64, "0.005"}, 2.6}, {{64, "0.01"}, 1.9}, {{64, "0.02"}, 2.1}};
  for (const auto& [key, loss] : sp) WriteRun(run("SP", key.first, key.second), "done", 10, loss);
  WriteRun(run("SP", 64, "0.04"), "diverged", 2, 40);
  for (int w : {32, 64})
    for (const std::string std : {"0.005", "0.01", "0.02", "0.04"})
      WriteRun(run("MUP", w, std), "done", 10,
               2.0 + std::abs(std::log2(std::stod(std) / 0.02)) - w / 1000.0);
  const std::vector<SweepResult> results = ReadRuns(points);

  EXPECT_EQ(SweptAxis(results), "parametrization.init_std");
  const std::vector<SweepGroup> groups = GroupSweep(results);
  ASSERT_EQ(groups.size(), 2u);  // one per parametrization, not one per init_std
  EXPECT_EQ(groups[0].name, "parametrization.kind=MUP");
  EXPECT_EQ(groups[1].name, "parametrization.kind=SP");
  EXPECT_EQ(groups[1].xs, (std::vector<double>{0.005, 0.01, 0.02, 0.04}));
  EXPECT_EQ(BestLrCsv(results),
            "group,width,axis,best,shift,val_loss\n"
            "parametrization.kind=MUP,32,parametrization.init_std,0.02,0,2.468000\n"
            "parametrization.kind=MUP,64,parametrization.init_std,0.02,0,2.436000\n"
            "parametrization.kind=SP,32,parametrization.init_std,0.02,0,2.500000\n"
            "parametrization.kind=SP,64,parametrization.init_std,0.01,-1,2.400000\n");

  const std::string table = SweepTable(results);
  EXPECT_TRUE(absl::StrContains(
      table, "\nfinal validation loss: parametrization.kind=SP\n"
             "   width      0.005       0.01       0.02       0.04 best init_std  shift\n"
             "      32     3.5000     3.0000     2.5000     2.7000          0.02     +0\n"
             "      64     3.1000     2.4000     2.6000   diverged          0.01     -1\n"))
      << table;
  EXPECT_FALSE(absl::StrContains(table, "best lr")) << table;

  const std::string csv = SweepCsv(results);
  EXPECT_TRUE(absl::StartsWith(csv, "run_id,parametrization,optimizer,width,lr,seed,status,step,"
                                    "train_loss,val_loss,tokens_per_s,parametrization.init_std\n"))
      << csv;
  EXPECT_TRUE(absl::StrContains(
      csv, absl::StrCat(run("SP", 64, "0.01").id,
                        ",SP,ADAMW,64,0.015625,0,done,10,1.900000,2.400000,900.0,0.01\n")))
      << csv;

  if (!HaveGnuplot()) GTEST_SKIP() << "gnuplot is not installed (launcher/setup.sh installs it)";
  auto files = WriteSweepReport(dir_.string(), results, true);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(Read("init_std_sweep.png").substr(0, 8), "\x89PNG\r\n\x1a\n");
  EXPECT_FALSE(std::filesystem::exists(dir_ / "lr_sweep.png"));
  EXPECT_EQ(std::count(files->written.begin(), files->written.end(),
                       (dir_ / "init_std_sweep.png").string()),
            1);
  const std::string gp = Read("plots/report.gp");
  for (const std::string part :
       {"set output 'init_std_sweep.png'", "set xlabel 'log2(init_std)'",
        "pngcairo noenhanced",  // '_' is a subscript otherwise
        "final validation loss against init_std", "title 'width 64, init_std 0.01'",
        "at the best init_std of each width"})
    EXPECT_TRUE(absl::StrContains(gp, part)) << "missing: " << part << "\n" << gp;
  // The plotted x of SP width 64's best point is log2(0.01).
  const std::string sp_data = Read("plots/init_std_sweep_0_0.dat");
  EXPECT_TRUE(absl::StrContains(sp_data, absl::StrFormat("%.6g 2.4\n", std::log2(0.01)))) << sp_data;
}

// With a learning-rate grid the lr stays the x-axis and another numeric axis splits the groups.
TEST_F(SweepReadBack, LrGridBesideANumericAxis) {
  const auto points = Grid(R"(widths: [32, 64] learning_rates: [0.01, 0.02]
      axes { field: "parametrization.init_std" values: ["0.01", "0.02"] })");
  for (const GridPoint& p : points) {
    const double lr = p.spec.optimizer().lr(), std = p.spec.parametrization().init_std();
    // Best lr 0.01 at init_std 0.01, 0.02 at init_std 0.02, at both widths.
    WriteRun(p, "done", 10, 2.0 + (lr == std ? 0 : 1) + p.spec.model().width() / 1000.0);
  }
  const std::vector<SweepResult> results = ReadRuns(points);
  EXPECT_EQ(SweptAxis(results), "optimizer.lr");
  EXPECT_EQ(BestLrCsv(results),
            "group,width,axis,best,shift,val_loss\n"
            "parametrization.init_std=0.01,32,optimizer.lr,0.01,0,2.532000\n"
            "parametrization.init_std=0.01,64,optimizer.lr,0.01,0,2.564000\n"
            "parametrization.init_std=0.02,32,optimizer.lr,0.02,0,2.532000\n"
            "parametrization.init_std=0.02,64,optimizer.lr,0.02,0,2.564000\n");
  const std::string table = SweepTable(results);
  EXPECT_TRUE(absl::StrContains(table, "      0.01       0.02    best lr  shift\n")) << table;
  EXPECT_TRUE(absl::StrContains(SweepCsv(results), ",tokens_per_s,parametrization.init_std\n"));
}

// Which field is the x-axis: the first of sweep.axes in spec order with several numeric values.
TEST_F(SweepReadBack, SweptAxisChoice) {
  auto axis = [&](const std::string& lists) { return SweptAxis(ReadRuns(Grid(lists))); };
  // Not numbers, or one value: the learning rate as before (a one-point group per value).
  const std::string no_numeric_axis = R"(widths: [32] learning_rates: [0.01]
      axes { field: "model.tie_embeddings" values: ["false", "true"] }
      axes { field: "parametrization.init_std" values: ["0.02"] })";
  EXPECT_EQ(axis(no_numeric_axis), "optimizer.lr");
  const auto results = ReadRuns(Grid(no_numeric_axis));
  ASSERT_EQ(GroupSweep(results).size(), 2u);
  EXPECT_EQ(GroupSweep(results)[0].name, "model.tie_embeddings=false parametrization.init_std=0.02");
  EXPECT_TRUE(absl::StrContains(SweepTable(results), "best lr")) << SweepTable(results);
  EXPECT_TRUE(absl::StrContains(SweepCsv(results),
                                ",tokens_per_s,model.tie_embeddings,parametrization.init_std\n"));
  // A non-numeric axis before a numeric one is passed over; of two numeric ones the first wins.
  EXPECT_EQ(axis(R"(widths: [32] axes { field: "model.tie_embeddings" values: ["false", "true"] }
                    axes { field: "parametrization.init_std" values: ["0.01", "0.02"] })"),
            "parametrization.init_std");
  EXPECT_EQ(axis(R"(widths: [32] axes { field: "parametrization.alpha_out" values: ["1", "2"] }
                    axes { field: "parametrization.init_std" values: ["0.01", "0.02"] })"),
            "parametrization.alpha_out");
  EXPECT_EQ(axis(R"(widths: [32] learning_rates: [0.01, 0.02]
                    axes { field: "parametrization.alpha_out" values: ["1", "2"] })"),
            "optimizer.lr");
}

// An axis with a value <= 0 (no log2): the plot's x is the value itself.
TEST_F(SweepReadBack, AxisWithZeroIsPlottedLinearly) {
  if (!HaveGnuplot()) GTEST_SKIP() << "gnuplot is not installed (launcher/setup.sh installs it)";
  const auto points = Grid(R"(widths: [32] learning_rates: [0.01]
      axes { field: "optimizer.weight_decay" values: ["0", "0.1"] })");
  WriteRun(points[0], "done", 10, 2.0);
  WriteRun(points[1], "done", 10, 3.0);
  const std::vector<SweepResult> results = ReadRuns(points);
  ASSERT_EQ(SweptAxis(results), "optimizer.weight_decay");
  ASSERT_TRUE(WriteSweepReport(dir_.string(), results, true).ok());
  const std::string gp = Read("plots/report.gp");
  EXPECT_TRUE(absl::StrContains(gp, "set xlabel 'weight_decay'")) << gp;
  EXPECT_EQ(Read("plots/weight_decay_sweep_0_0.dat"), "# width 32\n0 2.5\n0.1 3.5\n\n\n");
}

// `gdn sweep run --gpus N`: each running run's ranks get their own GPUs, round-robin over slots.
TEST(SweepGpus, SlotsShareOutTheGpus) {
  SweepOptions o;
  EXPECT_EQ(SlotGpus(o, 3), "");  // --gpus 0: CUDA_VISIBLE_DEVICES left alone
  o.gpus = 2;
  o.parallel = 4;
  EXPECT_EQ(SlotGpus(o, 0), "0");
  EXPECT_EQ(SlotGpus(o, 1), "1");
  EXPECT_EQ(SlotGpus(o, 2), "0");  // more runs than GPUs: they share
  EXPECT_EQ(SlotGpus(o, 3), "1");
  o.gpus = 4;
  o.ranks_per_run = 2;
  EXPECT_EQ(SlotGpus(o, 0), "0,1");
  EXPECT_EQ(SlotGpus(o, 1), "2,3");
  EXPECT_EQ(SlotGpus(o, 2), "0,1");
  o.gpus = 3;  // never the same GPU twice within a run
  EXPECT_EQ(SlotGpus(o, 1), "2,0");
}

TEST(Slurm, ArrayRanges) {
  EXPECT_EQ(ArrayRanges({0, 1, 2, 5, 7, 8}), "0-2,5,7-8");
  EXPECT_EQ(ArrayRanges({3}), "3");
  EXPECT_EQ(ArrayRanges({}), "");
}

TEST(Slurm, ScriptHoldsTheResourcesAndTheRequeue) {
  auto spec = ParseSpecText(R"(
    name: "widths"
    sweep { widths: [64, 128] learning_rates: [0.01, 0.02] dir: "runs/s" }
    slurm { max_running: 3 ntasks: 4 launcher: "mpirun --bind-to none" nodes: 2 cpus_per_task: 8
            time: "02:00:00" partition: "gpu" account: "proj" signal_seconds: 300
            sbatch: ["--gpus-per-task=1", "--qos=long"] }
  )",
                            "test");
  ASSERT_TRUE(spec.ok());
  FillDefaults(&*spec);
  auto points = ExpandGrid(*spec);
  ASSERT_TRUE(points.ok());
  const std::string script = SlurmScript(*spec, *points, {0, 2, 3}, "/opt/gdn", "/work");
  for (const std::string line :
       {"#!/bin/bash\n", "#SBATCH --job-name=widths\n", "#SBATCH --array=0,2-3%3\n",
        "#SBATCH --requeue\n", "#SBATCH --signal=B:USR2@300\n", "#SBATCH --open-mode=append\n",
        "#SBATCH --chdir=/work\n", "#SBATCH --nodes=2\n", "#SBATCH --ntasks=4\n",
        "#SBATCH --cpus-per-task=8\n", "#SBATCH --time=02:00:00\n", "#SBATCH --partition=gpu\n",
        "#SBATCH --account=proj\n", "#SBATCH --gpus-per-task=1\n", "#SBATCH --qos=long\n",
        "export OMP_NUM_THREADS=8\n", "run=${runs[$SLURM_ARRAY_TASK_ID]}\n",
        "mpirun --bind-to none '/opt/gdn' train --spec \"$run/point.textproto\" &\n",
        "trap 'kill -USR2 $child 2>/dev/null' USR2\n",
        "scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n"})
    EXPECT_TRUE(absl::StrContains(script, line)) << "missing: " << line << "\n" << script;
  // Every point by its array index, in plan order.
  for (size_t i = 0; i < points->size(); ++i)
    EXPECT_TRUE(absl::StrContains(script, absl::StrCat("'", (*points)[i].spec.run().dir(), "'  # ", i, "\n")))
        << script;
  // The output goes under the sweep directory, absolute; all #SBATCH lines precede any command.
  EXPECT_TRUE(absl::StrContains(script, "/runs/s/slurm/%A_%a.out\n")) << script;
  EXPECT_LT(script.rfind("#SBATCH"), script.find("set -u")) << script;

  // Defaults: srun starts the ranks; no partition, account or cpus lines; no limit when 0.
  spec->clear_slurm();
  spec->mutable_slurm()->set_max_running(0);
  FillDefaults(&*spec);
  const std::string plain = SlurmScript(*spec, *points, {0, 1}, "/opt/gdn", "/work");
  EXPECT_TRUE(absl::StrContains(plain, "#SBATCH --array=0-1\n")) << plain;
  EXPECT_TRUE(absl::StrContains(plain, "srun --mpi=pmix '/opt/gdn' train")) << plain;
  EXPECT_TRUE(absl::StrContains(plain, "#SBATCH --ntasks=1\n#SBATCH --time=01:00:00\n")) << plain;
  EXPECT_FALSE(absl::StrContains(plain, "--partition")) << plain;
  EXPECT_FALSE(absl::StrContains(plain, "OMP_NUM_THREADS")) << plain;
}

TEST(Slurm, SpecFieldsAreValidated) {
  auto spec = ParseSpecText(R"(slurm { ntasks: 0 time: "" sbatch: ["qos=x"] partition: "a'b" })",
                            "test");
  ASSERT_TRUE(spec.ok());
  const absl::Status s = ValidateSpec(*spec);
  EXPECT_TRUE(absl::StrContains(s.message(), "slurm.ntasks: must be > 0")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "slurm.time: empty")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "slurm.sbatch[0]: 'qos=x' is not an sbatch option")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "slurm.partition: must not hold")) << s;
}

// Values that go into the batch script as they are: a --time that sbatch reads, no whitespace
// that would split a #SBATCH line. Refused before anything is written.
TEST_F(SweepReadBack, SlurmRefusesTimesAndWordsSbatchWouldMisread) {
  auto spec = ParseSpecText(
      absl::StrCat("name: \"w\" run { steps: 10 } sweep { widths: [32] dir: \"", dir_.string(),
                   "\" }"),
      "test");
  ASSERT_TRUE(spec.ok()) << spec.status();
  FillDefaults(&*spec);
  auto points = ExpandGrid(*spec);
  ASSERT_TRUE(points.ok()) << points.status();
  for (const std::string time : {"abc", "1:2:3:4", "-5", "2-", "1::2", "1h", "01:00:00 "}) {
    spec->mutable_slurm()->set_time(time);
    auto job = PrepareSlurm(*spec, *points, false);
    ASSERT_FALSE(job.ok()) << time;
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(job.status().message(),
                                  absl::StrCat("slurm.time: '", time, "' is not an sbatch time")))
        << job.status();
  }
  spec->mutable_slurm()->set_time("01:00:00");
  spec->mutable_slurm()->set_partition("a b");
  spec->mutable_slurm()->set_account("x\ty");
  spec->set_name("my sweep");
  auto job = PrepareSlurm(*spec, *points, false);
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().message(),
            "slurm.partition: 'a b' holds whitespace, which the batch script would split; "
            "slurm.account: 'x\\ty' holds whitespace, which the batch script would split; "
            "name: 'my sweep' holds whitespace, which the batch script would split");
  EXPECT_FALSE(std::filesystem::exists(dir_)) << "nothing is written";

  spec->set_name("w");
  spec->mutable_slurm()->set_partition("gpu,cpu");
  spec->mutable_slurm()->set_account("proj");
  for (const std::string time : {"90", "30:00", "04:00:00", "2-12", "2-12:30", "2-12:30:00",
                                 "UNLIMITED"}) {
    spec->mutable_slurm()->set_time(time);
    auto job = PrepareSlurm(*spec, *points, false);
    ASSERT_TRUE(job.ok()) << time << ": " << job.status();
    std::ifstream in(job->script_path);
    std::stringstream script;
    script << in.rdbuf();
    EXPECT_TRUE(absl::StrContains(script.str(), "#SBATCH --time=" + time + "\n")) << script.str();
  }
}

TEST(Slurm, SchedulingDoesNotChangeRunIds) {
  auto a = ParseSpecText(R"(sweep { widths: [64] })", "a");
  auto b = ParseSpecText(R"(sweep { widths: [64] } slurm { partition: "x" max_running: 9 })", "b");
  ASSERT_TRUE(a.ok() && b.ok());
  auto pa = ExpandGrid(*a), pb = ExpandGrid(*b);
  ASSERT_TRUE(pa.ok() && pb.ok());
  EXPECT_EQ((*pa)[0].id, (*pb)[0].id);
  EXPECT_FALSE((*pb)[0].spec.has_slurm());
  // RunId itself leaves the slurm block out (FillDefaults would add one to every spec).
  EXPECT_EQ(RunId(*a, {"model.width=64"}), RunId(*b, {"model.width=64"}));
}

}  // namespace
}  // namespace gdn
