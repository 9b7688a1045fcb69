// Tests of runtime/tensor.h: allocation (Empty/Zeros and the block cache), View, Rows, Clone,
// CopyFrom, SetZero, To(dtype), element access at/set and column views (Columns).
#include "runtime/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

namespace gdn {
namespace {

// A tensor of uniform random values in [-1, 1) from a fixed seed.
Tensor Rand(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Tensor t = Tensor::Empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, u(rng));
  return t;
}

TEST(TensorTest, ShapeAccessors) {
  Tensor t = Tensor::Empty({2, 3, 5}, DType::kF64);
  EXPECT_TRUE(t.defined());
  EXPECT_FALSE(Tensor().defined());
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.nbytes(), 30u * 8);
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(t.dtype(), DType::kF64);
  EXPECT_EQ(Tensor::Empty({7}, DType::kF32).nbytes(), 28u);
  EXPECT_EQ(Tensor::Empty({7}, DType::kI32).nbytes(), 28u);
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({4, 0, 3}), 0);
}

TEST(TensorTest, ZerosIsZeroEvenFromReusedMemory) {
  for (DType dt : {DType::kF32, DType::kF64, DType::kI32}) {
    // Dirty a block of this size, free it (it goes to the cache), then ask for Zeros of the same
    // size: the reused block must be cleared.
    {
      Tensor dirty = Tensor::Empty({13, 11}, dt);
      for (int64_t i = 0; i < dirty.numel(); ++i) dirty.set(i, 7);
    }
    Tensor z = Tensor::Zeros({13, 11}, dt);
    ASSERT_EQ(z.numel(), 143);
    for (int64_t i = 0; i < z.numel(); ++i) ASSERT_EQ(z.at(i), 0.0) << DTypeName(dt) << " " << i;
  }
}

TEST(TensorTest, AtSetRoundTripPerDType) {
  Tensor f = Tensor::Empty({4}, DType::kF32);
  Tensor d = Tensor::Empty({4}, DType::kF64);
  Tensor n = Tensor::Empty({4}, DType::kI32);
  const double vals[4] = {0.1, -2.5, 1e-30, 12345.0};
  for (int i = 0; i < 4; ++i) {
    f.set(i, vals[i]);
    d.set(i, vals[i]);
    n.set(i, vals[i] == 0.1 ? 3 : vals[i] == -2.5 ? -2 : 0);
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(d.at(i), vals[i]);                                           // float64: exact
    EXPECT_EQ(f.at(i), static_cast<double>(static_cast<float>(vals[i])));  // float32: rounded
    EXPECT_EQ(f.data<float>()[i], static_cast<float>(vals[i]));
    EXPECT_EQ(d.data<double>()[i], vals[i]);
  }
  EXPECT_EQ(n.at(0), 3);
  EXPECT_EQ(n.at(1), -2);
  EXPECT_EQ(n.data<int32_t>()[0], 3);
  // Writes through data<T>() are seen by at().
  d.data<double>()[2] = 42.0;
  EXPECT_EQ(d.at(2), 42.0);
}

// bf16 (matrix-product operands): set() rounds to nearest even, at() widens exactly.
TEST(TensorTest, Bfloat16RoundsToNearestEven) {
  Tensor h = Tensor::Empty({6}, DType::kBF16);
  EXPECT_EQ(h.nbytes(), 12u);
  EXPECT_STREQ(DTypeName(h.dtype()), "bfloat16");
  // bf16 has 8 significant bits: 1 + 2^-8 is a tie (to even: 1), 1 + 3 * 2^-8 a tie to 1 + 2^-6
  // (even), 1 + 2^-8 + 2^-12 rounds up to 1 + 2^-7.
  const double in[6] = {1.0, 1.0 + 1.0 / 256, 1.0 + 3.0 / 256, 1.0 + 1.0 / 256 + 1.0 / 4096,
                        -2.5, 3.0e38};
  const double want[6] = {1.0, 1.0, 1.0 + 4.0 / 256, 1.0 + 2.0 / 256, -2.5, 3.00405527047391e38};
  for (int i = 0; i < 6; ++i) h.set(i, in[i]);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(h.at(i), want[i]) << i;
  EXPECT_NEAR(h.at(5), want[5], 1e24);  // the printed digits of a float
  EXPECT_EQ(h.To(DType::kF32).at(2), 1.0 + 4.0 / 256);
}

TEST(TensorTest, ViewSharesMemoryAndKeepsValues) {
  Tensor t = Rand({3, 4}, DType::kF64, 1);
  Tensor v = t.View({2, 6});
  EXPECT_EQ(v.shape(), (Shape{2, 6}));
  EXPECT_EQ(t.shape(), (Shape{3, 4}));  // the original is unchanged
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(v.at(i), t.at(i));
  v.set(7, 99.0);
  EXPECT_EQ(t.at(7), 99.0);
  t.set(0, -5.0);
  EXPECT_EQ(v.at(0), -5.0);
  EXPECT_EQ(v.data<double>(), t.data<double>());
  EXPECT_EQ(t.View({12}).numel(), 12);
  EXPECT_EQ(t.View({1, 12, 1}).rank(), 3);
}

TEST(TensorDeathTest, ViewChecksElementCount) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Tensor t = Tensor::Zeros({3, 4}, DType::kF32);
  EXPECT_DEATH(t.View({5, 2}), "");
  EXPECT_DEATH(t.View({13}), "");
}

TEST(TensorTest, RowsSlicesAndSharesMemory) {
  Tensor t = Rand({5, 3}, DType::kF64, 2);
  Tensor r = t.Rows(1, 4);
  EXPECT_EQ(r.shape(), (Shape{3, 3}));
  for (int64_t i = 0; i < 9; ++i) EXPECT_EQ(r.at(i), t.at(3 + i));
  r.set(0, 123.0);
  EXPECT_EQ(t.at(3), 123.0);
  // Rows of Rows compose offsets.
  Tensor rr = r.Rows(1, 2);
  EXPECT_EQ(rr.shape(), (Shape{1, 3}));
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(rr.at(i), t.at(6 + i));
  // Higher rank: a row is everything after dimension 0.
  Tensor t3 = Rand({4, 2, 3}, DType::kF32, 3);
  Tensor s3 = t3.Rows(2, 4);
  EXPECT_EQ(s3.shape(), (Shape{2, 2, 3}));
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(s3.at(i), t3.at(12 + i));
  EXPECT_EQ(t.Rows(2, 2).numel(), 0);
  EXPECT_EQ(t.Rows(0, 5).data<double>(), t.data<double>());
  // A view of a row slice keeps the offset.
  Tensor flat = t.Rows(3, 5).View({6});
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(flat.at(i), t.at(9 + i));
}

TEST(TensorTest, CloneIsDeep) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor t = Rand({4, 5}, dt, 4);
    Tensor c = t.Clone();
    EXPECT_EQ(c.shape(), t.shape());
    EXPECT_EQ(c.dtype(), dt);
    EXPECT_NE(c.raw(), t.raw());
    for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(c.at(i), t.at(i));
    const double before = t.at(3);
    c.set(3, 1000.0);
    EXPECT_EQ(t.at(3), before);
    t.set(4, -1000.0);
    EXPECT_NE(c.at(4), -1000.0);
  }
  // Cloning a row slice copies just that slice.
  Tensor t = Rand({4, 2}, DType::kF64, 5);
  Tensor c = t.Rows(2, 3).Clone();
  EXPECT_EQ(c.shape(), (Shape{1, 2}));
  EXPECT_EQ(c.at(0), t.at(4));
  EXPECT_EQ(c.at(1), t.at(5));
}

TEST(TensorTest, CopyFromAndSetZero) {
  Tensor src = Rand({3, 4}, DType::kF64, 6);
  Tensor dst = Tensor::Zeros({3, 4}, DType::kF64);
  dst.CopyFrom(src);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(dst.at(i), src.at(i));
  EXPECT_NE(dst.raw(), src.raw());
  // Into a slice: only those rows change.
  Tensor big = Tensor::Zeros({5, 4}, DType::kF64);
  big.Rows(1, 4).CopyFrom(src);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(big.at(i), 0.0);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(big.at(4 + i), src.at(i));
  for (int64_t i = 16; i < 20; ++i) EXPECT_EQ(big.at(i), 0.0);
  big.Rows(1, 2).SetZero();
  for (int64_t i = 4; i < 8; ++i) EXPECT_EQ(big.at(i), 0.0);
  EXPECT_EQ(big.at(8), src.at(4));
  dst.SetZero();
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(dst.at(i), 0.0);
}

TEST(TensorTest, ToConvertsDTypes) {
  Tensor f = Rand({6, 7}, DType::kF32, 7);
  Tensor d = f.To(DType::kF64);
  EXPECT_EQ(d.dtype(), DType::kF64);
  EXPECT_EQ(d.shape(), f.shape());
  for (int64_t i = 0; i < f.numel(); ++i)  // float -> double is exact
    EXPECT_EQ(d.data<double>()[i], static_cast<double>(f.data<float>()[i]));
  Tensor back = d.To(DType::kF32);
  for (int64_t i = 0; i < f.numel(); ++i) EXPECT_EQ(back.data<float>()[i], f.data<float>()[i]);
  // double -> float rounds to nearest.
  Tensor dd = Rand({50}, DType::kF64, 8);
  Tensor ff = dd.To(DType::kF32);
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(ff.data<float>()[i], static_cast<float>(dd.at(i)));
  // Integers both ways.
  Tensor n = Tensor::Empty({3}, DType::kI32);
  n.set(0, -4);
  n.set(1, 0);
  n.set(2, 70000);
  Tensor nd = n.To(DType::kF64);
  EXPECT_EQ(nd.at(0), -4.0);
  EXPECT_EQ(nd.at(2), 70000.0);
  Tensor nn = nd.To(DType::kI32);
  EXPECT_EQ(nn.data<int32_t>()[2], 70000);
  // The conversion is a copy.
  d.set(0, 5.0);
  EXPECT_NE(f.at(0), 5.0);
}

TEST(TensorTest, ColumnsViewSharesMemoryWithItsRowStride) {
  Tensor t = Rand({4, 10}, DType::kF32, 9);
  Tensor c = t.Columns(3, 7);
  EXPECT_EQ(c.shape(), (Shape{4, 4}));
  EXPECT_FALSE(c.contiguous());
  EXPECT_EQ(c.row_stride(), 10);
  EXPECT_EQ(c.strided_data<float>(), t.data<float>() + 3);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(c.at(r * 4 + j), t.at(r * 10 + 3 + j));
  c.set(5, 42.0);  // row 1, column 1 of the view: t[1, 4]
  EXPECT_EQ(t.at(14), 42.0);
  // Columns of a column view, rows of one, and a view that keeps the last dimension.
  Tensor cc = c.Columns(1, 3);
  EXPECT_EQ(cc.row_stride(), 10);
  EXPECT_EQ(cc.at(2), t.at(14));
  Tensor rows = c.Rows(2, 4);
  EXPECT_EQ(rows.at(0), t.at(23));
  Tensor v3 = c.View({2, 2, 4});
  EXPECT_EQ(v3.row_stride(), 10);
  EXPECT_EQ(v3.Rows(1, 2).at(4), t.at(33));
  // All the columns: contiguous again.
  EXPECT_TRUE(t.Columns(0, 10).contiguous());
  EXPECT_EQ(c.To(DType::kF64).at(5), 42.0);  // To(dtype) goes through at()
}

TEST(TensorDeathTest, ColumnViewsOnlyThroughStridedAccess) {
  Tensor c = Tensor::Zeros({4, 10}, DType::kF32).Columns(0, 5);
  EXPECT_DEATH(c.data<float>(), "column view");
  EXPECT_DEATH(c.Clone(), "column view");
  EXPECT_DEATH(c.View({20}), "keeps its last dimension");
  EXPECT_DEATH(Tensor::Zeros({4}, DType::kF32).Columns(0, 1), "Columns");
}

}  // namespace
}  // namespace gdn
