// The model on CUDA where the CPU cannot stand in for it: the bf16 mode's kept weight copies
// (Parameter::operand) and the recurrence's saved forward (run.save_recurrence). Skips each case
// without a GPU (tests/gpu/run_gpu_tests.sh runs it).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/lm.h"
#include "runtime/cuda_device.h"
#include "tests/cuda_test_util.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

ExperimentSpec SmallSpec() {
  ExperimentSpec s;
  FillDefaults(&s);
  s.mutable_model()->set_vocab_size(96);
  s.mutable_model()->set_width(256);
  s.mutable_model()->set_depth(2);
  s.mutable_model()->set_head_dim(64);
  EXPECT_TRUE(ValidateModelSpec(s).ok()) << ValidateModelSpec(s);
  return s;
}

int KeptCopies(LanguageModel& m) {
  int n = 0;
  for (const auto& p : m.params().all()) n += p->operand.defined() ? 1 : 0;
  return n;
}

// Every parameter gradient of `got` equals `want`'s bit for bit, but the embedding's: it adds
// repeated tokens' rows with atomics, in varying order, so it is equal to float32 rounding of its
// largest values.
void ExpectSameGradients(LanguageModel& got, LanguageModel& want) {
  const auto &pg = got.params().all(), &pw = want.params().all();
  ASSERT_EQ(pg.size(), pw.size());
  for (size_t i = 0; i < pg.size(); ++i) {
    const Tensor a = pg[i]->grad.To(Device::kCPU), b = pw[i]->grad.To(Device::kCPU);
    const bool atomics = pg[i]->name == "embedding";
    double largest = 0;
    for (int64_t j = 0; j < b.numel(); ++j) largest = std::max(largest, std::abs(b.at(j)));
    for (int64_t j = 0; j < a.numel(); ++j) {
      if (atomics)
        ASSERT_NEAR(a.at(j), b.at(j), 1e-6 * largest) << "embedding " << j;
      else
        ASSERT_EQ(a.at(j), b.at(j)) << pg[i]->name << " gradient " << j;
    }
  }
}

// Sets the global product precision for a scope.
struct Precision {
  explicit Precision(ops::MatmulPrecision p) : saved(ops::GetMatmulPrecision()) {
    ops::SetMatmulPrecision(p);
  }
  ~Precision() { ops::SetMatmulPrecision(saved); }
  ops::MatmulPrecision saved;
};

// A model built in the bf16 mode keeps bf16 copies of its product weights, rounded once before
// each forward; one built in the float32 mode has none, so with bf16 products switched on its
// products round the weights at every use. Both must give the same loss and gradients, bit for
// bit; and after the values change (as an optimizer step, a gather or a checkpoint load changes
// them) the next forward must read the new values, not stale copies.
TEST(CudaModelTest, KeptWeightCopiesEqualRoundingAtEveryProduct) {
  GDN_REQUIRE_GPU();
  const ExperimentSpec s = SmallSpec();
  const Tensor tokens = RandomTokens(2, 131, 96, 5);  // T = 130: chunks of 64 and a tail
  std::unique_ptr<LanguageModel> rounding;
  {
    Precision fp32(ops::MatmulPrecision::kFloat32);
    rounding = std::make_unique<LanguageModel>(s, DType::kF32, TensorParallel{}, nullptr,
                                               Device::kCUDA);
  }
  Precision bf16(ops::MatmulPrecision::kBfloat16);
  LanguageModel kept(s, DType::kF32, TensorParallel{}, nullptr, Device::kCUDA);
  LanguageModel other(s, DType::kF32, TensorParallel{}, nullptr, Device::kCUDA);
  rounding->Initialize(1);
  kept.Initialize(1);
  other.Initialize(2);
  // Per layer: the six input projections, the output projection, gate, up, down; and the head.
  EXPECT_EQ(KeptCopies(kept), 2 * 10 + 1);
  EXPECT_EQ(KeptCopies(*rounding), 0);

  const double want = rounding->ForwardBackward(tokens);
  EXPECT_EQ(kept.ForwardBackward(tokens), want);
  ASSERT_NO_FATAL_FAILURE(ExpectSameGradients(kept, *rounding));

  const auto& pk = kept.params().all();
  const double other_loss = other.ForwardLoss(tokens);
  EXPECT_NE(other_loss, want);
  const auto& po = other.params().all();
  for (size_t i = 0; i < pk.size(); ++i) pk[i]->value.CopyFrom(po[i]->value);
  EXPECT_EQ(kept.ForwardLoss(tokens), other_loss);
}

// run.save_recurrence: the recurrence's backward reads its forward's chunk states instead of
// computing them again, with and without activation recomputation (where only the backward's
// forward saves): the same loss and gradients, bit for bit, as the model without, in the float32
// and the bf16 mode, over two steps' worth of gradients (the second accumulating).
TEST(CudaModelTest, SavedRecurrenceGivesTheSameGradients) {
  GDN_REQUIRE_GPU();
  const ExperimentSpec s = SmallSpec();
  for (const auto precision : {ops::MatmulPrecision::kFloat32, ops::MatmulPrecision::kBfloat16}) {
    Precision mode(precision);
    SCOPED_TRACE(precision == ops::MatmulPrecision::kFloat32 ? "float32" : "bf16");
    auto make = [&](bool save, bool recompute) {
      auto m = std::make_unique<LanguageModel>(s, DType::kF32, TensorParallel{}, nullptr,
                                               Device::kCUDA);
      m->Initialize(3);
      m->set_save_recurrence(save);
      m->set_recompute(recompute);
      return m;
    };
    auto plain = make(false, false), saved = make(true, false), both = make(true, true);
    for (uint64_t seed : {5, 6}) {
      const Tensor tokens = RandomTokens(2, 131, 96, seed);  // T = 130: chunks of 64 and a tail
      const double want = plain->ForwardBackward(tokens, 0.5);
      EXPECT_EQ(saved->ForwardBackward(tokens, 0.5), want);
      EXPECT_EQ(both->ForwardBackward(tokens, 0.5), want);
    }
    for (LanguageModel* m : {saved.get(), both.get()})
      ASSERT_NO_FATAL_FAILURE(ExpectSameGradients(*m, *plain));
  }
}

}  // namespace
}  // namespace gdn
