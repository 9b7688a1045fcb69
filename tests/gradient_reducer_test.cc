// The data-parallel gradient reducer on one process: its bucket and ZeRO-1 shard layout, buckets
// starting while the backward still runs (with final gradients only), and sharded optimizer
// steps equal to unsharded ones. The reductions over real ranks are proven under MPI
// (tests/distributed_test.sh, tests/resume_test.sh) and NCCL (tests/gpu/multi_gpu_check.sh).
#include "model/gradient_reducer.h"

#include <functional>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "launcher/trainer.h"
#include "model/config.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

ExperimentSpec SmallSpec() {
  ExperimentSpec spec;
  FillDefaults(&spec);
  spec.mutable_model()->set_width(32);
  spec.mutable_model()->set_depth(3);
  spec.mutable_model()->set_head_dim(4);
  spec.mutable_model()->set_vocab_size(64);
  spec.mutable_model()->set_chunk_size(8);
  spec.mutable_parametrization()->set_base_width(32);
  spec.mutable_optimizer()->set_lr(0.01);
  return spec;
}

// Rank `rank` of a group of `size` whose collectives act as if the other ranks contributed
// zeros; `on_start`, when set, runs as each non-blocking collective starts.
class FakeGroup : public Communicator {
 public:
  FakeGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(const Tensor&) override {}
  void AllReduceMax(const Tensor&) override {}
  void AllGather(const Tensor& in, const Tensor& out) override {
    out.SetZero();
    out.Rows(rank_ * in.dim(0), (rank_ + 1) * in.dim(0)).CopyFrom(in);
  }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override {
    out.CopyFrom(in.Rows(rank_ * out.dim(0), (rank_ + 1) * out.dim(0)));
  }
  void Broadcast(const Tensor&, int) override {}
  void Barrier() override {}
  void StartAllReduceSum(const Tensor& t) override {
    if (on_start) on_start(t);
    ++started;
  }
  void WaitAsync() override { ++waits; }

  std::function<void(const Tensor&)> on_start;
  int started = 0, waits = 0;

 private:
  int rank_, size_;
};

// Every element of every parameter is owned by exactly one rank of the group, each bucket is
// padded to the group size and holds at most one bucket's bytes unless it is one parameter.
TEST(GradientReducer, ShardsCoverEveryElementOnce) {
  const ExperimentSpec spec = SmallSpec();
  for (int size : {1, 2, 3, 4}) {
    std::vector<std::vector<int>> owners;
    for (int rank = 0; rank < size; ++rank) {
      LanguageModel model(spec, DType::kF32);
      FakeGroup dp(rank, size);
      const int64_t bucket_bytes = 4096;
      GradientReducer reducer(model.params(), {}, nullptr, &dp, {bucket_bytes, true});
      const auto& all = model.params().all();
      if (owners.empty())
        for (const auto& p : all) owners.emplace_back(p->value.numel(), 0);
      int64_t shard_end = 0;
      for (const GradientReducer::Segment& s : reducer.segments()) {
        for (int64_t i = s.offset; i < s.offset + s.length; ++i) ++owners[s.param][i];
        EXPECT_GE(s.shard_offset, shard_end) << "segments overlap in the shard";
        shard_end = s.shard_offset + s.length;
      }
      EXPECT_LE(shard_end, reducer.shard_size());
      const std::vector<int64_t> buckets = reducer.BucketBytes();
      EXPECT_GT(buckets.size(), 3u);
      int64_t total = 0;
      for (int64_t b : buckets) {
        EXPECT_EQ(b % (4 * size), 0) << "bucket not padded to the group size";
        total += b;
      }
      EXPECT_EQ(reducer.shard_size() * size * 4, total);
    }
    for (size_t p = 0; p < owners.size(); ++p)
      for (size_t i = 0; i < owners[p].size(); ++i)
        ASSERT_EQ(owners[p][i], 1) << "parameter " << p << " element " << i << ", group " << size;
  }
}

// With small buckets the first ones start while the backward still runs (the embedding, the last
// gradient finished, is still zero), and every bucket starts holding its final gradients.
TEST(GradientReducer, BucketsStartDuringTheBackwardWithFinalGradients) {
  const ExperimentSpec spec = SmallSpec();
  LanguageModel model(spec, DType::kF32);
  model.Initialize(3);
  FakeGroup dp(0, 2);
  GradientReducer reducer(model.params(), {}, nullptr, &dp, {4096, false});
  const Parameter* embedding = model.params().Find("embedding");
  std::vector<Tensor> at_start;
  std::vector<double> embedding_at_start;
  dp.on_start = [&](const Tensor& t) {
    at_start.push_back(t.Clone());
    embedding_at_start.push_back(ops::SumSquares(embedding->grad));
  };
  const Tensor tokens = RandomTokens(2, 17, 64, 5);
  model.params().ZeroGrads();
  model.ForwardBackward(tokens, 1.0, &reducer);
  const int during_backward = dp.started;
  reducer.Finish();
  EXPECT_EQ(dp.started, during_backward) << "every bucket should have started in the backward";
  EXPECT_EQ(dp.waits, 1);
  ASSERT_GT(dp.started, 3);
  EXPECT_EQ(embedding_at_start.front(), 0.0) << "the first bucket waited for the whole backward";
  EXPECT_GT(embedding_at_start.back(), 0.0);
  // The buckets' contents at their start are the final gradients (the fake reduction is identity).
  std::vector<Tensor> final_grads;
  for (const auto& p : model.params().all()) final_grads.push_back(p->grad.Clone());
  LanguageModel fresh(spec, DType::kF32);
  fresh.Initialize(3);
  fresh.ForwardBackward(tokens, 1.0);
  for (size_t i = 0; i < final_grads.size(); ++i)
    for (int64_t j = 0; j < final_grads[i].numel(); ++j)
      ASSERT_EQ(final_grads[i].at(j), fresh.params().all()[i]->grad.at(j));
  double started_sum = 0, final_sum = 0;
  for (const Tensor& t : at_start) started_sum += ops::SumSquares(t);
  for (const Tensor& g : final_grads) final_sum += ops::SumSquares(g);
  EXPECT_NEAR(started_sum, final_sum, 1e-6 * final_sum);
}

// ZeRO-1 on a group of one: reduce-scatter, the update of the shard and the all-gather give the
// unsharded optimizer's values and state, bit for bit (no clipping: the norm's summation order
// differs), and within rounding with clipping.
TEST(GradientReducer, ShardedStepsMatchUnsharded) {
  for (double clip : {0.0, 0.05}) {
    ExperimentSpec spec = SmallSpec();
    spec.mutable_optimizer()->set_grad_clip(clip);
    auto single = MakeSingleRankCommunicator();
    LanguageModel plain(spec, DType::kF32), sharded(spec, DType::kF32);
    plain.Initialize(7);
    sharded.Initialize(7);
    GradientReducer r_plain(plain.params(), {}, nullptr, single.get(), {4096, false});
    GradientReducer r_sharded(sharded.params(), {}, nullptr, single.get(), {4096, true});
    Optimizer o_plain(spec.optimizer(), plain.params(), &r_plain);
    Optimizer o_sharded(spec.optimizer(), sharded.params(), &r_sharded);
    for (int step = 1; step <= 3; ++step) {
      const Tensor tokens = RandomTokens(4, 17, 64, 10 + step);
      const StepResult a = TrainStep(plain, r_plain, o_plain, tokens, 2, 4, clip, 0.01, step, *single);
      const StepResult b =
          TrainStep(sharded, r_sharded, o_sharded, tokens, 2, 4, clip, 0.01, step, *single);
      EXPECT_EQ(a.loss, b.loss);
      EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-6 * a.grad_norm);
    }
    const double tol = clip > 0 ? 1e-5 : 0;
    const auto& pa = plain.params().all();
    const auto& pb = sharded.params().all();
    for (size_t i = 0; i < pa.size(); ++i)
      for (int64_t j = 0; j < pa[i]->value.numel(); ++j)
        ASSERT_NEAR(pa[i]->value.at(j), pb[i]->value.at(j), tol * std::abs(pa[i]->value.at(j)))
            << pa[i]->name << " clip " << clip;
    const std::vector<Tensor> sa = o_plain.FullState(), sb = o_sharded.FullState();
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i)
      for (int64_t j = 0; j < sa[i].numel(); ++j)
        ASSERT_NEAR(sa[i].at(j), sb[i].at(j), tol * std::abs(sa[i].at(j)) + (clip > 0 ? 1e-12 : 0));
    // The full state set back into a sharded optimizer is the same state.
    Optimizer o_again(spec.optimizer(), sharded.params(), &r_sharded);
    o_again.SetFullState(sb);
    const std::vector<Tensor> sc = o_again.FullState();
    for (size_t i = 0; i < sb.size(); ++i)
      for (int64_t j = 0; j < sb[i].numel(); ++j) ASSERT_EQ(sb[i].at(j), sc[i].at(j));
  }
}

// The trainer's optimizer (state in the reducer's flat layout, one multi-tensor update per step)
// against the per-parameter optimizer on the same gradients: bitwise the same values and state,
// for AdamW and SGD with weight decay, per-class rate multipliers (muP) and, on one step, a
// gradient clipping factor.
TEST(GradientReducer, FlatOptimizerMatchesPerParameterOptimizer) {
  for (auto kind : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    ExperimentSpec spec = SmallSpec();
    spec.mutable_optimizer()->set_kind(kind);
    spec.mutable_optimizer()->set_weight_decay(0.1);
    spec.mutable_model()->set_width(64);  // width multiplier 2: the classes' rates differ
    auto single = MakeSingleRankCommunicator();
    LanguageModel flat(spec, DType::kF32), plain(spec, DType::kF32);
    flat.Initialize(11);
    plain.Initialize(11);
    GradientReducer reducer(flat.params(), {}, nullptr, single.get(), {4096, false});
    Optimizer o_flat(spec.optimizer(), flat.params(), &reducer);
    Optimizer o_plain(spec.optimizer(), plain.params());
    for (int step = 1; step <= 3; ++step) {
      const Tensor tokens = RandomTokens(2, 17, 64, 20 + step);
      reducer.ZeroGrads();
      plain.params().ZeroGrads();
      flat.ForwardBackward(tokens);
      plain.ForwardBackward(tokens);
      const double clip_scale = step == 2 ? 0.37 : 1.0;
      o_flat.Step(step, 0.01, clip_scale);
      o_plain.Step(step, 0.01, clip_scale);
    }
    const auto& a = flat.params().all();
    const auto& b = plain.params().all();
    for (size_t i = 0; i < a.size(); ++i)
      for (int64_t j = 0; j < a[i]->value.numel(); ++j)
        ASSERT_EQ(a[i]->value.at(j), b[i]->value.at(j)) << a[i]->name << " " << kind;
    const std::vector<Tensor> sa = o_flat.FullState(), sb = o_plain.FullState();
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i)
      for (int64_t j = 0; j < sa[i].numel(); ++j) ASSERT_EQ(sa[i].at(j), sb[i].at(j));
  }
}

}  // namespace
}  // namespace gdn
