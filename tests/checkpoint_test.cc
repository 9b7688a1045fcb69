// Checkpoints (model/checkpoint.h) in one process: a save/load round trip restores parameters and
// optimizer state bit for bit, loading cuts the right tensor-parallel slices, damaged or
// incomplete checkpoints are found and skipped, and a checkpoint of another model or optimizer is
// refused with an error naming the file and tensor. (Killed runs, preemption and multi-rank
// saves are tests/resume_test.sh.)
#include "model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <cstring>

#include "kernels/ops.h"
#include "model/lm.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

namespace fs = std::filesystem;

ExperimentSpec TinySpec(OptimizerSpec::Kind kind = OptimizerSpec::ADAMW, int width = 32) {
  ExperimentSpec s;
  s.mutable_model()->set_width(width);
  s.mutable_model()->set_depth(1);
  s.mutable_model()->set_head_dim(4);
  s.mutable_model()->set_vocab_size(64);
  s.mutable_model()->set_chunk_size(16);
  s.mutable_parametrization()->set_base_width(32);
  s.mutable_optimizer()->set_kind(kind);
  FillDefaults(&s);
  return s;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("gdn_ckpt_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A model after two optimizer steps, so parameters and optimizer state are all non-trivial.
  struct Trained {
    std::unique_ptr<LanguageModel> model;
    std::unique_ptr<Optimizer> optimizer;
  };
  Trained Train(const ExperimentSpec& spec) {
    Trained t{std::make_unique<LanguageModel>(spec, DType::kF32), nullptr};
    t.model->Initialize(7);
    t.optimizer = std::make_unique<Optimizer>(spec.optimizer(), t.model->params());
    const Tensor tokens = RandomTokens(2, 17, spec.model().vocab_size(), 3);
    for (int step = 1; step <= 2; ++step) {
      t.model->params().ZeroGrads();
      t.model->ForwardBackward(tokens);
      t.optimizer->Step(step, 1e-2);
    }
    return t;
  }
  absl::Status Save(const Trained& t, int64_t step, int keep = 5) {
    TrainerState state{step, 4.5, 1.25, 4.25};
    return SaveCheckpoint(dir_, state, t.model->params(), t.optimizer.get(), CheckpointLayout{},
                          keep);
  }
  std::string Shard(int64_t step) const {
    return CheckpointPath(dir_, step) + "/shard-0-of-1.safetensors";
  }

  std::string dir_;
};

void ExpectBitwiseEqual(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << what;
}

TEST_F(CheckpointTest, RoundTripRestoresEverythingBitForBit) {
  for (auto kind : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    const ExperimentSpec spec = TinySpec(kind);
    Trained a = Train(spec);
    ASSERT_TRUE(Save(a, 2).ok());
    auto found = FindCheckpoint(dir_);
    ASSERT_TRUE(found.ok() && found->has_value());
    EXPECT_EQ((*found)->step, 2);

    LanguageModel fresh(spec, DType::kF32);
    fresh.Initialize(99);
    Optimizer opt(spec.optimizer(), fresh.params());
    auto state = LoadCheckpoint(**found, fresh.params(), &opt, {});
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(state->step, 2);
    EXPECT_EQ(state->first_loss, 4.5);
    EXPECT_EQ(state->train_time_s, 1.25);
    EXPECT_EQ(state->last_loss, 4.25);
    for (size_t i = 0; i < fresh.params().all().size(); ++i)
      ExpectBitwiseEqual(fresh.params().all()[i]->value, a.model->params().all()[i]->value,
                         fresh.params().all()[i]->name);
    ASSERT_EQ(opt.FullState().size(), a.optimizer->FullState().size());
    for (size_t i = 0; i < opt.FullState().size(); ++i)
      ExpectBitwiseEqual(opt.FullState()[i], a.optimizer->FullState()[i], "optimizer state");
    fs::remove_all(dir_ + "/checkpoints");
  }
}

// Rank r of n's part of a one-rank tensor, cut here with tensor views (independently of
// Parameter::CopySlice, which the loader uses): equal contiguous parts of dim 0 or of dim 1.
Tensor ExpectedSlice(const Tensor& full, ShardDim shard, int r, int n) {
  if (shard == ShardDim::kReplicated) return full.Clone();
  if (shard == ShardDim::kRows) {
    const int64_t part = full.dim(0) / n;
    return full.Rows(r * part, (r + 1) * part).Clone();
  }
  const int64_t part = full.dim(1) / n;
  const Tensor view = full.Columns(r * part, (r + 1) * part);
  Tensor out = Tensor::Empty(view.shape(), view.dtype());  // element by element: Clone takes
  for (int64_t i = 0; i < view.numel(); ++i) out.set(i, view.at(i));  // contiguous tensors only
  return out;
}

// A one-rank checkpoint loaded by tensor-parallel rank r of 2 gives exactly rank r's slices of
// the one-rank tensors and of both Adam moments.
TEST_F(CheckpointTest, LoadsTensorParallelSlices) {
  const ExperimentSpec spec = TinySpec();
  Trained a = Train(spec);
  ASSERT_TRUE(Save(a, 2).ok());
  const CheckpointRef ref{2, CheckpointPath(dir_, 2)};
  int sharded = 0;
  for (int r = 0; r < 2; ++r) {
    const TensorParallel tp{r, 2};
    LanguageModel part(spec, DType::kF32, tp, nullptr);
    Optimizer opt(spec.optimizer(), part.params());
    ASSERT_TRUE(LoadCheckpoint(ref, part.params(), &opt, tp).ok());
    for (size_t i = 0; i < part.params().all().size(); ++i) {
      const Parameter& p = *part.params().all()[i];
      ExpectBitwiseEqual(p.value, ExpectedSlice(a.model->params().all()[i]->value, p.shard, r, 2),
                         p.name);
      for (const int moment : {0, 1})
        ExpectBitwiseEqual(opt.FullState()[2 * i + moment],
                           ExpectedSlice(a.optimizer->FullState()[2 * i + moment], p.shard, r, 2),
                           p.name + (moment ? " adam_v" : " adam_m"));
      sharded += p.shard != ShardDim::kReplicated && r == 0;
    }
  }
  EXPECT_GT(sharded, 10);  // the test really exercises slicing
}

TEST_F(CheckpointTest, KeepsTheNewestAndIgnoresUnfinishedOnes) {
  Trained a = Train(TinySpec());
  for (int64_t step : {1, 2, 3, 4}) ASSERT_TRUE(Save(a, step, /*keep=*/2).ok());
  auto list = ListCheckpoints(dir_);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].step, 4);
  EXPECT_EQ(list[1].step, 3);
  // A directory without a manifest (a crash before it was written) is not a checkpoint.
  fs::create_directories(CheckpointPath(dir_, 9));
  std::ofstream(CheckpointPath(dir_, 9) + "/shard-0-of-1.safetensors") << "partial";
  EXPECT_EQ(ListCheckpoints(dir_)[0].step, 4);
}

TEST_F(CheckpointTest, DamagedCheckpointsAreDetectedAndSkipped) {
  Trained a = Train(TinySpec());
  ASSERT_TRUE(Save(a, 1).ok());
  ASSERT_TRUE(Save(a, 2).ok());
  const std::string shard = Shard(2);
  // One flipped byte in the data.
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-7, std::ios::end);
    char c;
    f.seekg(-7, std::ios::end);
    f.get(c);
    f.seekp(-7, std::ios::end);
    f.put(static_cast<char>(c ^ 0x10));
  }
  absl::Status s = VerifyCheckpoint(CheckpointPath(dir_, 2));
  EXPECT_NE(s.message().find("shard-0-of-1.safetensors: CRC-32"), std::string::npos) << s;
  auto found = FindCheckpoint(dir_);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->step, 1);
  // Asking for the damaged step by number is an error, not a silent fallback.
  auto exact = FindCheckpoint(dir_, 2);
  EXPECT_FALSE(exact.ok());
  // Truncation and a missing file.
  fs::resize_file(Shard(1), fs::file_size(Shard(1)) - 10);
  s = VerifyCheckpoint(CheckpointPath(dir_, 1));
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s;
  found = FindCheckpoint(dir_);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
  ASSERT_TRUE(Save(a, 3).ok());
  fs::remove(CheckpointPath(dir_, 3) + "/trainer.json");
  s = VerifyCheckpoint(CheckpointPath(dir_, 3));
  EXPECT_NE(s.message().find("trainer.json: cannot open"), std::string::npos) << s;
}

TEST_F(CheckpointTest, RefusesAnotherModelOrOptimizer) {
  Trained a = Train(TinySpec());
  ASSERT_TRUE(Save(a, 2).ok());
  const CheckpointRef ref{2, CheckpointPath(dir_, 2)};
  {
    const ExperimentSpec wider = TinySpec(OptimizerSpec::ADAMW, 48);
    LanguageModel m(wider, DType::kF32);
    Optimizer opt(wider.optimizer(), m.params());
    auto s = LoadCheckpoint(ref, m.params(), &opt, {});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("param/embedding"), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find("a checkpoint of another model"), std::string::npos);
  }
  {
    const ExperimentSpec sgd = TinySpec(OptimizerSpec::SGD);
    LanguageModel m(sgd, DType::kF32);
    Optimizer opt(sgd.optimizer(), m.params());
    auto s = LoadCheckpoint(ref, m.params(), &opt, {});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("holds adamw optimizer state, but optimizer.kind is sgd"),
              std::string::npos)
        << s.status();
  }
}

// An import: full parameters only, at step 0; loading leaves the optimizer state at zero.
TEST_F(CheckpointTest, ParametersOnlyCheckpoint) {
  const ExperimentSpec spec = TinySpec();
  Trained a = Train(spec);
  std::vector<std::pair<std::string, Tensor>> full;
  for (const auto& p : a.model->params().all()) full.emplace_back(p->name, p->value);
  ASSERT_TRUE(WriteParametersCheckpoint(dir_, full).ok());
  auto found = FindCheckpoint(dir_);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->step, 0);
  auto read = ReadFullParameters(**found);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->size(), full.size());
  LanguageModel m(spec, DType::kF32);
  Optimizer opt(spec.optimizer(), m.params());
  auto state = LoadCheckpoint(**found, m.params(), &opt, {});
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->step, 0);
  for (size_t i = 0; i < full.size(); ++i)
    ExpectBitwiseEqual(m.params().all()[i]->value, full[i].second, full[i].first);
  for (const Tensor& t : opt.FullState()) EXPECT_EQ(ops::SumSquares(t), 0.0);
}

}  // namespace
}  // namespace gdn
