#include "runtime/spec.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace gdn {
namespace {

namespace fs = std::filesystem;
// Substring check without gmock (only gtest is linked).
#define EXPECT_HAS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "in: " << (text)

constexpr char kFullSpec[] = R"pb(
  name: "brown-mup"
  model {
    vocab_size: 512 width: 96 depth: 3 head_scaling: HEAD_SIZE head_dim: 32 num_heads: 2
    key_dim_ratio: 0.5 expand_v: 1 value_heads_per_key_head: 2 conv_size: 3 mlp_ratio: 2.5
    mlp_multiple_of: 8 tie_embeddings: true norm_eps: 1e-5 negative_eigenvalues: true
    recurrence: SEQUENTIAL chunk_size: 16
  }
  parametrization { kind: SP base_width: 32 init_std: 0.01 alpha_in: 2 alpha_out: 0.5
                    zero_init_readout: true }
  optimizer { kind: SGD lr: 0.003 beta1: 0.8 beta2: 0.99 eps: 1e-10 weight_decay: 0.1
              momentum: 0.5 warmup_steps: 10 decay: LINEAR min_lr_ratio: 0 grad_clip: 0 }
  data { format: LLMC_BIN train_path: "a/train.bin" val_path: "a/val_*.bin" seq_len: 64
         batch_size: 4 }
  run { steps: 100 eval_interval: 0 eval_batches: 2 log_interval: 5 seed: 7 dir: "runs/x" }
  parallel { tensor_parallel: 2 }
  sweep { widths: [64, 128] learning_rates: [1e-3, 3e-3] optimizers: [ADAMW, SGD]
          parametrizations: [MUP] seeds: [0, 1] dir: "runs/s"
          axes { field: "model.depth" values: ["2", "4"] } }
)pb";

ExperimentSpec Parse(const std::string& text) {
  auto spec = ParseSpecText(text, "test.pbtxt");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ExperimentSpec();
}

bool Equal(const ExperimentSpec& a, const ExperimentSpec& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

// A temp dir with readable train/val shards, so ValidateSpec's path checks pass.
class SpecFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("spec_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
    for (const char* name : {"train.bin", "val_000.bin", "val_001.bin"})
      std::ofstream(dir_ / name) << "x";
  }
  void TearDown() override { fs::remove_all(dir_); }
  // A default spec (defaults filled) whose data paths exist.
  ExperimentSpec Valid() {
    ExperimentSpec spec;
    FillDefaults(&spec);
    spec.mutable_data()->set_train_path((dir_ / "train.bin").string());
    spec.mutable_data()->set_val_path((dir_ / "val_*.bin").string());
    return spec;
  }
  std::string ErrorOf(const ExperimentSpec& spec) {
    absl::Status s = ValidateSpec(spec);
    EXPECT_FALSE(s.ok());
    return std::string(s.message());
  }
  fs::path dir_;
};

// ---- parsing ----

TEST(ParseSpec, FullSpec) {
  ExperimentSpec spec = Parse(kFullSpec);
  EXPECT_EQ(spec.name(), "brown-mup");
  EXPECT_EQ(spec.model().width(), 96);
  EXPECT_EQ(spec.model().head_scaling(), ModelSpec::HEAD_SIZE);
  EXPECT_DOUBLE_EQ(spec.model().norm_eps(), 1e-5);
  EXPECT_TRUE(spec.model().tie_embeddings());
  EXPECT_EQ(spec.model().recurrence(), ModelSpec::SEQUENTIAL);
  EXPECT_EQ(spec.parametrization().kind(), ParametrizationSpec::SP);
  EXPECT_EQ(spec.optimizer().kind(), OptimizerSpec::SGD);
  EXPECT_EQ(spec.optimizer().decay(), OptimizerSpec::LINEAR);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 0.003);
  EXPECT_EQ(spec.data().val_path(), "a/val_*.bin");
  EXPECT_EQ(spec.run().seed(), 7u);
  EXPECT_EQ(spec.parallel().tensor_parallel(), 2);
  EXPECT_EQ(spec.sweep().widths_size(), 2);
  EXPECT_EQ(spec.sweep().optimizers(1), OptimizerSpec::SGD);
  ASSERT_EQ(spec.sweep().axes_size(), 1);
  EXPECT_EQ(spec.sweep().axes(0).values(1), "4");
}

TEST(ParseSpec, UnknownFieldNamesFileLineAndField) {
  auto spec = ParseSpecText("name: \"a\"\nmodel {\n  widht: 3\n}\n", "exp/a.pbtxt");
  ASSERT_FALSE(spec.ok());
  std::string msg(spec.status().message());
  EXPECT_HAS(msg, "exp/a.pbtxt:3:");
  EXPECT_HAS(msg, "widht");
  EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST(ParseSpec, MalformedValues) {
  auto bad_int = ParseSpecText("model { width: abc }", "f.pbtxt");
  ASSERT_FALSE(bad_int.ok());
  EXPECT_HAS(bad_int.status().message(), "f.pbtxt:1:");
  auto bad_enum = ParseSpecText("optimizer { kind: ADAM }", "f.pbtxt");
  ASSERT_FALSE(bad_enum.ok());
  EXPECT_HAS(bad_enum.status().message(), "ADAM");
  EXPECT_FALSE(ParseSpecText("model { width: 3", "f.pbtxt").ok());
  EXPECT_FALSE(ParseSpecText("model { width: 3.5 }", "f.pbtxt").ok());
}

TEST(ParseSpec, LoadSpecFileAndMissingFile) {
  fs::path path = fs::path(::testing::TempDir()) / ("load_" + std::to_string(getpid()) + ".pbtxt");
  std::ofstream(path) << "model { depth: 5 }\n";
  auto spec = LoadSpec(path.string());
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model().depth(), 5);
  fs::remove(path);

  auto missing = LoadSpec("/nonexistent/x.pbtxt");
  ASSERT_FALSE(missing.ok());
  EXPECT_HAS(missing.status().message(), "/nonexistent/x.pbtxt: cannot read: ");
  // A folder opens as a stream that reads nothing: it must not pass as an empty spec.
  auto folder = LoadSpec(::testing::TempDir());
  ASSERT_FALSE(folder.ok());
  EXPECT_HAS(folder.status().message(), "is a directory, not a spec file");
  auto empty = LoadSpec("");
  ASSERT_FALSE(empty.ok());
  EXPECT_HAS(empty.status().message(), "spec file: the path is empty");
}

// ---- overrides ----

TEST(Override, EveryType) {
  ExperimentSpec spec;
  ASSERT_TRUE(ApplyOverride(&spec, "model.width=256").ok());                 // int32
  ASSERT_TRUE(ApplyOverride(&spec, "optimizer.lr=3e-4").ok());               // double
  ASSERT_TRUE(ApplyOverride(&spec, "model.tie_embeddings=true").ok());       // bool
  ASSERT_TRUE(ApplyOverride(&spec, "optimizer.kind=SGD").ok());              // enum by name
  ASSERT_TRUE(ApplyOverride(&spec, "data.train_path=d/t r.bin").ok());       // string, verbatim
  ASSERT_TRUE(ApplyOverride(&spec, "name=my run").ok());                     // top-level string
  ASSERT_TRUE(ApplyOverride(&spec, "run.seed=18446744073709551615").ok());   // uint64
  ASSERT_TRUE(ApplyOverride(&spec, "sweep.widths=64,128,256").ok());         // repeated
  ASSERT_TRUE(ApplyOverride(&spec, "sweep.optimizers=SGD,ADAMW").ok());      // repeated enum
  EXPECT_EQ(spec.model().width(), 256);
  EXPECT_TRUE(spec.model().has_width());
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 3e-4);
  EXPECT_TRUE(spec.model().tie_embeddings());
  EXPECT_EQ(spec.optimizer().kind(), OptimizerSpec::SGD);
  EXPECT_EQ(spec.data().train_path(), "d/t r.bin");
  EXPECT_EQ(spec.name(), "my run");
  EXPECT_EQ(spec.run().seed(), 18446744073709551615ull);
  EXPECT_EQ(spec.sweep().widths_size(), 3);
  EXPECT_EQ(spec.sweep().widths(2), 256);
  ASSERT_EQ(spec.sweep().optimizers_size(), 2);
  EXPECT_EQ(spec.sweep().optimizers(0), OptimizerSpec::SGD);
}

TEST(Override, RepeatedReplacesAndEmptyClears) {
  ExperimentSpec spec = Parse("sweep { widths: [1, 2, 3, 4] learning_rates: 0.1 }");
  ASSERT_TRUE(ApplyOverride(&spec, "sweep.widths=8,16").ok());
  ASSERT_EQ(spec.sweep().widths_size(), 2);
  EXPECT_EQ(spec.sweep().widths(0), 8);
  EXPECT_EQ(spec.sweep().widths(1), 16);
  ASSERT_TRUE(ApplyOverride(&spec, "sweep.learning_rates=").ok());
  EXPECT_EQ(spec.sweep().learning_rates_size(), 0);
}

TEST(Override, SetToDefaultValueSurvivesFillDefaults) {
  ExperimentSpec spec;
  ASSERT_TRUE(ApplyOverride(&spec, "model.depth=0").ok());
  EXPECT_TRUE(spec.model().has_depth());
  FillDefaults(&spec);
  EXPECT_EQ(spec.model().depth(), 0);
}

TEST(Override, Errors) {
  ExperimentSpec spec;
  auto msg = [&](std::string_view a) {
    absl::Status s = ApplyOverride(&spec, a);
    EXPECT_FALSE(s.ok()) << a;
    return std::string(s.message());
  };
  EXPECT_EQ(msg("model.widht=3"), "--set model.widht=3: no field 'widht' in gdn.ModelSpec");
  EXPECT_EQ(msg("modle.width=3"), "--set modle.width=3: no field 'modle' in gdn.ExperimentSpec");
  EXPECT_EQ(msg("model.width=abc"), "--set model.width=abc: not a valid int32");
  EXPECT_EQ(msg("model.width=1.5"), "--set model.width=1.5: not a valid int32");
  EXPECT_EQ(msg("model.width="), "--set model.width=: not a valid int32");
  EXPECT_EQ(msg("optimizer.lr=fast"), "--set optimizer.lr=fast: not a valid double");
  EXPECT_EQ(msg("run.seed=-1"), "--set run.seed=-1: not a valid uint64");
  EXPECT_EQ(msg("model.tie_embeddings=maybe"), "--set model.tie_embeddings=maybe: not a valid bool");
  EXPECT_HAS(msg("optimizer.kind=ADAM"), "not a valid gdn.OptimizerSpec.Kind");
  EXPECT_HAS(msg("optimizer.kind=ADAM"), "ADAMW, SGD");
  EXPECT_HAS(msg("model.width"), "--set model.width: missing '='");
  EXPECT_HAS(msg("model=3"), "is a message; set one of its fields");
  EXPECT_HAS(msg("model.width.x=3"), "'width' in gdn.ModelSpec is not a message");
  EXPECT_HAS(msg("sweep.axes=3"), "repeated message");
  EXPECT_HAS(msg("=3"), "empty field path");
  // A bad list item names the item and leaves the old list in place.
  ASSERT_TRUE(ApplyOverride(&spec, "sweep.widths=1,2").ok());
  EXPECT_HAS(msg("sweep.widths=64,x"), "item 'x': not a valid int32");
  EXPECT_EQ(spec.sweep().widths_size(), 2);
  EXPECT_FALSE(spec.model().has_width());  // nothing above touched it
}

// ---- defaults and printing ----

TEST(Defaults, FillSetsEveryUnsetField) {
  ExperimentSpec spec = Parse("model { width: 64 }");
  EXPECT_FALSE(spec.model().has_norm_eps());
  EXPECT_FALSE(spec.has_optimizer());
  FillDefaults(&spec);
  EXPECT_TRUE(spec.model().has_norm_eps());
  EXPECT_DOUBLE_EQ(spec.model().norm_eps(), 1e-6);
  EXPECT_EQ(spec.model().width(), 64);  // present values kept
  EXPECT_TRUE(spec.has_name());
  EXPECT_TRUE(spec.optimizer().has_lr());
  EXPECT_TRUE(spec.optimizer().has_kind());
  EXPECT_EQ(spec.data().train_path(), "data/brown/train.bin");
  EXPECT_EQ(spec.sweep().widths_size(), 0);  // repeated untouched
  std::string text = SpecToText(spec);
  EXPECT_HAS(text, "norm_eps: 1e-06");
  EXPECT_HAS(text, "kind: ADAMW");
}

TEST(Defaults, TextRoundTrips) {
  ExperimentSpec spec = Parse(kFullSpec);
  FillDefaults(&spec);
  spec.mutable_optimizer()->set_lr(0.1 + 0.2);  // needs 17 digits
  spec.mutable_model()->set_key_dim_ratio(1.0 / 3.0);
  auto back = ParseSpecText(SpecToText(spec), "printed");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(Equal(spec, *back)) << SpecToText(spec) << "\nvs\n" << SpecToText(*back);
  EXPECT_EQ(back->optimizer().lr(), 0.1 + 0.2);

  ExperimentSpec empty;
  FillDefaults(&empty);
  auto back2 = ParseSpecText(SpecToText(empty), "printed");
  ASSERT_TRUE(back2.ok());
  EXPECT_TRUE(Equal(empty, *back2));
}

// ---- validation ----

TEST_F(SpecFiles, ValidSpecPasses) {
  EXPECT_TRUE(ValidateSpec(Valid()).ok()) << ValidateSpec(Valid());
  ExperimentSpec unfilled;  // unset fields validate as their defaults
  unfilled.mutable_data()->set_train_path((dir_ / "train.bin").string());
  unfilled.mutable_data()->set_val_path((dir_ / "train.bin").string());
  EXPECT_TRUE(ValidateSpec(unfilled).ok()) << ValidateSpec(unfilled);
}

TEST_F(SpecFiles, EachBadValueNamesItsField) {
  struct Case {
    const char* set;
    const char* expect;
  };
  const Case cases[] = {
      {"model.vocab_size=0", "model.vocab_size: must be > 0, got 0"},
      {"model.width=-4", "model.width: must be > 0, got -4"},
      {"model.depth=0", "model.depth: must be > 0"},
      {"model.head_dim=0", "model.head_dim: must be > 0"},
      {"model.num_heads=0", "model.num_heads: must be > 0"},
      {"model.expand_v=0", "model.expand_v: must be > 0"},
      {"model.value_heads_per_key_head=0", "model.value_heads_per_key_head: must be > 0"},
      {"model.conv_size=0", "model.conv_size: must be > 0"},
      {"model.chunk_size=0", "model.chunk_size: must be > 0"},
      {"model.mlp_multiple_of=0", "model.mlp_multiple_of: must be > 0"},
      {"model.mlp_ratio=0", "model.mlp_ratio: must be > 0, got 0"},
      {"model.key_dim_ratio=-0.5", "model.key_dim_ratio: must be > 0, got -0.5"},
      {"model.norm_eps=0", "model.norm_eps: must be > 0"},
      {"parametrization.base_width=0", "parametrization.base_width: must be > 0"},
      {"parametrization.init_std=-1", "parametrization.init_std: must be >= 0, got -1"},
      {"parametrization.alpha_in=nan", "parametrization.alpha_in: must be > 0, got nan"},
      {"parametrization.alpha_in=inf", "parametrization.alpha_in: must be > 0, got inf"},
      {"parametrization.alpha_out=nan", "parametrization.alpha_out: must be > 0, got nan"},
      {"parametrization.alpha_out=0", "parametrization.alpha_out: must be > 0, got 0"},
      {"run.dir=", "run.dir: empty"},
      {"sweep.dir=", "sweep.dir: empty"},
      {"optimizer.lr=-0.1", "optimizer.lr: must be > 0, got -0.1"},
      {"optimizer.lr=0", "optimizer.lr: must be > 0, got 0"},
      {"optimizer.lr=nan", "optimizer.lr: must be > 0, got nan"},
      {"optimizer.lr=inf", "optimizer.lr: must be > 0, got inf"},
      {"optimizer.beta1=1", "optimizer.beta1: must be in [0, 1), got 1"},
      {"optimizer.beta2=-0.1", "optimizer.beta2: must be in [0, 1), got -0.1"},
      {"optimizer.eps=0", "optimizer.eps: must be > 0"},
      {"optimizer.weight_decay=-1", "optimizer.weight_decay: must be >= 0"},
      {"optimizer.momentum=1", "optimizer.momentum: must be in [0, 1)"},
      {"optimizer.warmup_steps=-1", "optimizer.warmup_steps: must be >= 0, got -1"},
      {"optimizer.min_lr_ratio=1.5", "optimizer.min_lr_ratio: must be in [0, 1], got 1.5"},
      {"optimizer.grad_clip=-1", "optimizer.grad_clip: must be >= 0"},
      {"data.seq_len=0", "data.seq_len: must be > 0"},
      {"data.batch_size=-2", "data.batch_size: must be > 0, got -2"},
      {"run.steps=0", "run.steps: must be > 0"},
      {"run.eval_interval=-1", "run.eval_interval: must be >= 0"},
      {"run.eval_batches=0", "run.eval_batches: must be > 0"},
      {"run.log_interval=0", "run.log_interval: must be > 0"},
      {"parallel.tensor_parallel=0", "parallel.tensor_parallel: must be >= 1, got 0"},
      {"sweep.learning_rates=0.1,0", "sweep.learning_rates[1]: must be > 0, got 0"},
      {"sweep.widths=64,-1", "sweep.widths[1]: must be > 0, got -1"},
  };
  for (const Case& c : cases) {
    ExperimentSpec spec = Valid();
    ASSERT_TRUE(ApplyOverride(&spec, c.set).ok()) << c.set;
    EXPECT_HAS(ErrorOf(spec), (c.expect)) << c.set;
  }
  // Edges that are allowed.
  ExperimentSpec edges = Valid();
  for (const char* set : {"optimizer.beta1=0", "optimizer.min_lr_ratio=1", "optimizer.grad_clip=0",
                          "run.eval_interval=0", "parametrization.init_std=0"})
    ASSERT_TRUE(ApplyOverride(&edges, set).ok());
  EXPECT_TRUE(ValidateSpec(edges).ok()) << ValidateSpec(edges);
}

TEST_F(SpecFiles, SeveralProblemsOnOneLine) {
  ExperimentSpec spec = Valid();
  spec.mutable_model()->set_width(0);
  spec.mutable_run()->set_steps(0);
  std::string msg = ErrorOf(spec);
  EXPECT_HAS(msg, "model.width");
  EXPECT_HAS(msg, "run.steps");
  EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST_F(SpecFiles, DataPaths) {
  ExperimentSpec missing = Valid();
  missing.mutable_data()->set_train_path((dir_ / "nope.bin").string());
  EXPECT_HAS(ErrorOf(missing), "data.train_path: " + (dir_ / "nope.bin").string() +
                                   ": no such file (run `gdn data prepare` first)");

  ExperimentSpec no_match = Valid();
  no_match.mutable_data()->set_val_path((dir_ / "test_*.bin").string());
  EXPECT_HAS(ErrorOf(no_match), "data.val_path: ");
  EXPECT_HAS(ErrorOf(no_match), "no file matches");

  ExperimentSpec directory = Valid();
  directory.mutable_data()->set_train_path(dir_.string());
  EXPECT_HAS(ErrorOf(directory), "data.train_path: ");
  EXPECT_HAS(ErrorOf(directory), "not a regular file");

  ExperimentSpec empty = Valid();
  empty.mutable_data()->set_val_path("");
  EXPECT_HAS(ErrorOf(empty), "data.val_path: empty");
}

TEST_F(SpecFiles, SweepAxes) {
  ExperimentSpec spec = Valid();
  auto* axis = spec.mutable_sweep()->add_axes();
  axis->set_field("model.depht");
  axis->add_values("2");
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[0]");
  EXPECT_HAS(ErrorOf(spec), "no field 'depht' in gdn.ModelSpec");

  axis->set_field("model.depth");
  EXPECT_TRUE(ValidateSpec(spec).ok()) << ValidateSpec(spec);
  axis->add_values("deep");
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[0] (model.depth=deep): not a valid int32");
  axis->clear_values();
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[0] (model.depth): no values");
}

// A field swept twice would have one sweep override the other, and the run ids would name values
// the runs do not have: refused, naming both.
TEST_F(SpecFiles, EachFieldIsSweptOnce) {
  ExperimentSpec spec = Valid();
  spec.mutable_sweep()->add_widths(64);
  auto* axis = spec.mutable_sweep()->add_axes();
  axis->set_field("model.width");
  axis->add_values("32");
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[0]: model.width is already swept by sweep.widths");
  axis->set_field("optimizer.lr");
  EXPECT_TRUE(ValidateSpec(spec).ok()) << ValidateSpec(spec);
  spec.mutable_sweep()->add_learning_rates(0.01);
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[0]: optimizer.lr is already swept by sweep.learning_rates");
  spec.mutable_sweep()->clear_learning_rates();
  auto* again = spec.mutable_sweep()->add_axes();
  again->set_field("optimizer.lr");
  again->add_values("0.1");
  EXPECT_HAS(ErrorOf(spec), "sweep.axes[1]: optimizer.lr is already swept by sweep.axes[0]");
}

// ---- sweep grids ----

TEST(Grid, CountOrderIdsAndDirs) {
  ExperimentSpec spec = Parse(R"pb(
    sweep { parametrizations: [MUP, SP] widths: [64, 128, 256] learning_rates: [1e-3, 3e-3]
            seeds: [0] dir: "runs/grid" axes { field: "model.depth" values: ["2", "4"] } }
  )pb");
  auto grid = ExpandGrid(spec);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_EQ(grid->size(), 2u * 3 * 2 * 1 * 2);

  // First axis slowest, last fastest; assignments in axis order.
  EXPECT_EQ((*grid)[0].assignments,
            (std::vector<std::string>{"parametrization.kind=MUP", "model.width=64",
                                      "optimizer.lr=0.001", "run.seed=0", "model.depth=2"}));
  EXPECT_EQ((*grid)[1].assignments.back(), "model.depth=4");
  EXPECT_EQ((*grid)[2].assignments[2], "optimizer.lr=0.003");
  EXPECT_EQ((*grid)[4].assignments[1], "model.width=128");
  EXPECT_EQ((*grid)[12].assignments[0], "parametrization.kind=SP");

  std::set<std::string> ids;
  for (const GridPoint& p : *grid) {
    ids.insert(p.id);
    EXPECT_EQ(p.spec.run().dir(), "runs/grid/" + p.id);
    EXPECT_FALSE(p.spec.has_sweep());  // a point is one run
    EXPECT_TRUE(p.spec.model().has_norm_eps());  // defaults filled
    EXPECT_EQ(p.id.find('/'), std::string::npos);
  }
  EXPECT_EQ(ids.size(), grid->size());

  const GridPoint& last = grid->back();
  EXPECT_EQ(last.spec.parametrization().kind(), ParametrizationSpec::SP);
  EXPECT_EQ(last.spec.model().width(), 256);
  EXPECT_DOUBLE_EQ(last.spec.optimizer().lr(), 3e-3);
  EXPECT_EQ(last.spec.model().depth(), 4);
  EXPECT_EQ(last.id.substr(0, last.id.size() - 9), "sp_w256_lr3e-03_s0_depth4");

  // Stable: the same spec gives the same ids; growing a list keeps existing ids.
  auto again = ExpandGrid(spec);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < grid->size(); ++i) EXPECT_EQ((*grid)[i].id, (*again)[i].id);
  spec.mutable_sweep()->add_seeds(1);
  auto grown = ExpandGrid(spec);
  ASSERT_TRUE(grown.ok());
  EXPECT_EQ(grown->size(), 2 * grid->size());
  std::set<std::string> grown_ids;
  for (const GridPoint& p : *grown) grown_ids.insert(p.id);
  for (const std::string& id : ids) EXPECT_TRUE(grown_ids.count(id)) << id;
}

TEST(Grid, IdFormat) {
  ExperimentSpec spec = Parse(
      "sweep { parametrizations: MUP optimizers: ADAMW widths: 128 learning_rates: 0.001 seeds: 0 }");
  auto grid = ExpandGrid(spec);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_EQ(grid->size(), 1u);
  const std::string& id = (*grid)[0].id;
  ASSERT_EQ(id.size(), std::string("mup_adamw_w128_lr1e-03_s0-").size() + 8) << id;
  EXPECT_EQ(id.substr(0, 26), "mup_adamw_w128_lr1e-03_s0-");
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef", 26), std::string::npos) << id;
  EXPECT_EQ((*grid)[0].spec.run().dir(), "runs/sweep/" + id);  // sweep.dir default
}

TEST(Grid, Errors) {
  auto empty = ExpandGrid(Parse("sweep { dir: \"x\" }"));
  ASSERT_FALSE(empty.ok());
  EXPECT_HAS(empty.status().message(), "sweep: empty grid (set sweep.widths");

  auto no_values = ExpandGrid(Parse("sweep { axes { field: \"model.depth\" } }"));
  ASSERT_FALSE(no_values.ok());
  EXPECT_HAS(no_values.status().message(), "sweep.axes[0] (model.depth): no values");

  auto bad_value = ExpandGrid(Parse(
      "sweep { widths: 64 axes { field: \"model.depth\" values: \"2\" } "
      "axes { field: \"optimizer.decay\" values: [\"COSINE\", \"STEP\"] } }"));
  ASSERT_FALSE(bad_value.ok());
  EXPECT_HAS(bad_value.status().message(), "sweep.axes[1] (optimizer.decay=STEP)");

  auto bad_field = ExpandGrid(Parse("sweep { axes { field: \"model.dpeth\" values: \"2\" } }"));
  ASSERT_FALSE(bad_field.ok());
  EXPECT_HAS(bad_field.status().message(), "no field 'dpeth'");

  auto duplicate = ExpandGrid(Parse("sweep { widths: [64, 64] }"));
  ASSERT_FALSE(duplicate.ok());
  EXPECT_HAS(duplicate.status().message(), "duplicate run");
}

TEST(Grid, RunIdTracksTheBaseSpec) {
  std::vector<std::string> assignments = {"model.width=128"};
  ExperimentSpec a = Parse("model { width: 128 }");
  FillDefaults(&a);
  ExperimentSpec b = a;
  EXPECT_EQ(RunId(a, assignments), RunId(b, assignments));
  b.mutable_run()->set_dir("elsewhere");  // the run dir is not part of the identity
  EXPECT_EQ(RunId(a, assignments), RunId(b, assignments));
  b.mutable_data()->set_seq_len(256);
  EXPECT_NE(RunId(a, assignments), RunId(b, assignments));
  EXPECT_EQ(RunId(b, assignments).substr(0, 5), "w128-");
  // Stating a default explicitly does not change the id.
  ExperimentSpec c = Parse("model { width: 128 }");
  EXPECT_EQ(RunId(a, assignments), RunId(c, assignments));
  // Through ExpandGrid: a changed base field gives new ids.
  ExperimentSpec s1 = Parse("sweep { widths: [64] }");
  ExperimentSpec s2 = Parse("optimizer { weight_decay: 0.1 } sweep { widths: [64] }");
  EXPECT_NE((*ExpandGrid(s1))[0].id, (*ExpandGrid(s2))[0].id);
  // Generic axes: leaf name + value, enums lower-cased, filesystem-safe ('_' only between
  // assignments).
  ExperimentSpec d;
  EXPECT_EQ(RunId(d, {"model.head_scaling=HEAD_SIZE", "model.mlp_ratio=2.50", "name=a/b"})
                .substr(0, 45),
            "head-scaling-head-size_mlp-ratio2.5_name-a-b-");
}

}  // namespace
}  // namespace gdn
