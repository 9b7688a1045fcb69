// The CUDA backend against the CPU backend: every op of kernels/op_set.inc on device tensors, on
// fresh random inputs (the seed is printed; GDN_TEST_SEED=<n> repeats a run) at several shapes,
// compared with the same op on CPU tensors through the dispatcher (kernels/ops.h). Plus the device
// runtime: copies, views, the caching allocator, the GPU choice from the local rank.
//
// Relative error: max|gpu - cpu| / max|cpu| per output (NaN counts as infinite), printed as
// "RELERR <op> <output> <shape> <value>" lines for the GPU log. Tolerance kTol = 1e-5 for every op:
// both sides compute the same formulas in float32 and differ only in the order of sums (per-row
// sums, sums over rows for parameter gradients, the gated delta rule's sums over dk and dv each
// step). Measured on an H200 (tests/gpu/run_gpu_tests.sh): at most 2.9e-6 (the loss over a
// 50257-word vocabulary), below 1e-6 for everything else. Host reductions (SumSquares, MeanAbs)
// run in double on both sides: 1e-12.
// Parameter gradients are pre-filled with the same random values on both devices, so a kernel
// that overwrote instead of accumulating would fail by far more than the tolerance.
// Without a usable GPU every test is skipped with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "runtime/cuda_device.h"
#include "tests/cuda_test_util.h"

namespace gdn {
namespace {

constexpr double kTol = 1e-5;
constexpr Device kGpu = Device::kCUDA, kCpu = Device::kCPU;

std::mt19937_64& Gen() {
  static std::mt19937_64* gen = [] {
    uint64_t seed = std::random_device{}();
    if (const char* s = std::getenv("GDN_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
    std::printf("cuda_ops_test seed %llu\n", static_cast<unsigned long long>(seed));
    return new std::mt19937_64(seed);
  }();
  return *gen;
}

// CPU float32 tensor, uniform in [lo, hi).
Tensor Rand(const Shape& shape, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  Tensor t = Tensor::Empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(u(Gen()));
  return t;
}
Tensor RandTokens(int64_t n, int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int> u(static_cast<int>(lo), static_cast<int>(hi) - 1);
  Tensor t = Tensor::Empty({n}, DType::kI32);
  for (int64_t i = 0; i < n; ++i) t.data<int32_t>()[i] = u(Gen());
  return t;
}
Tensor Dev(const Tensor& t) { return t.To(kGpu); }
// |t| of a CPU float32 tensor, and its largest value: an op run on its inputs' absolute values
// gives the size of the terms that its outputs sum (Compare's scale where those can cancel).
Tensor AbsOf(const Tensor& t) {
  Tensor a = Tensor::Empty(t.shape(), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) a.data<float>()[i] = std::abs(t.data<float>()[i]);
  return a;
}
double MaxAbs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.at(i)));
  return m;
}

// Compares a device result with the CPU's, prints and checks the relative error and NaNs. The
// error is relative to max|cpu|, or to `scale` when that is larger (an output's natural size when
// its largest value can itself be a cancellation).
void Compare(const std::string& op, const std::string& what, const Tensor& got_dev,
             const Tensor& want, double tol, double scale = 0) {
  ASSERT_EQ(got_dev.device(), kGpu) << op << " " << what;
  const Tensor got = got_dev.To(kCpu);
  ASSERT_EQ(got.numel(), want.numel());
  double num = 0, den = 0;
  int64_t nans = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.at(i), w = want.at(i);
    if (std::isnan(g)) ++nans;
    const double d = std::abs(g - w);
    num = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(num, d);
    den = std::max(den, std::abs(w));
  }
  EXPECT_GT(den, 0) << op << " " << what << ": vacuous comparison, the reference is all zero";
  const double err = num / std::max({den, scale, 1e-300});
  std::printf("RELERR %s %s %s %.3e\n", op.c_str(), what.c_str(),
              ShapeString(want.shape()).c_str(), err);
  EXPECT_EQ(nans, 0) << op << " " << what << ": NaN in the GPU result";
  EXPECT_LE(err, tol) << op << " " << what << " " << ShapeString(want.shape());
}
void CompareScalar(const std::string& op, double got, double want, double tol) {
  const double err = std::abs(got - want) / std::max(std::abs(want), 1e-300);
  std::printf("RELERR %s value [] %.3e\n", op.c_str(), err);
  EXPECT_FALSE(std::isnan(got)) << op;
  EXPECT_LE(err, tol) << op << ": gpu " << got << " cpu " << want;
}

// ---------------------------------------------------------------------------------------------
// The device runtime.

TEST(CudaRuntimeTest, CopiesViewsAndZeros) {
  GDN_REQUIRE_GPU();
  const Tensor h = Rand({7, 5});
  const Tensor d = Dev(h);
  EXPECT_EQ(d.device(), kGpu);
  EXPECT_EQ(d.shape(), h.shape());
  Compare("runtime", "to_and_back", d, h, 0);
  // Device-to-device copy, clone, rows and views share or copy memory as on the CPU.
  const Tensor c = d.Clone();
  Compare("runtime", "clone", c, h, 0);
  const Tensor rows = d.Rows(2, 5);
  Compare("runtime", "rows", rows, h.Rows(2, 5), 0);
  const Tensor e = Tensor::Empty({3, 5}, DType::kF32, kGpu);
  e.CopyFrom(rows);
  Compare("runtime", "copy_rows", e, h.Rows(2, 5), 0);
  Compare("runtime", "view", d.View({35}), h.View({35}), 0);
  // SetZero on a row slice of a device tensor clears exactly those rows.
  c.Rows(1, 3).SetZero();
  const Tensor back = c.To(kCpu);
  for (int64_t i = 0; i < 35; ++i)
    EXPECT_EQ(back.at(i), (i >= 5 && i < 15) ? 0.0 : h.at(i)) << i;
  const Tensor z = Tensor::Zeros({1000}, DType::kF64, kGpu).To(kCpu);
  for (int64_t i = 0; i < z.numel(); ++i) ASSERT_EQ(z.at(i), 0.0);
  // Host tensor into a device tensor through CopyFrom.
  const Tensor d2 = Tensor::Empty({35}, DType::kF32, kGpu);
  d2.CopyFrom(h);
  Compare("runtime", "copy_from_host", d2, h, 0);
}

TEST(CudaRuntimeDeathTest, HostElementAccessOnDeviceTensorDies) {
  GDN_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(Tensor::Zeros({3}, DType::kF32, kGpu).at(0), "CPU tensors only");
  EXPECT_DEATH(Tensor::Zeros({3}, DType::kF32, kGpu).set(0, 1), "CPU tensors only");
  EXPECT_DEATH(ops::Fill(Tensor::Zeros({3}, DType::kF64, kGpu), 1), "float32 only");
  // A bf16 operand outside the bf16 mode is a programming error, caught before cuBLAS.
  const Tensor h16 = Tensor::Zeros({2, 2}, DType::kBF16, kGpu);
  const Tensor c = Tensor::Zeros({2, 2}, DType::kF32, kGpu);
  EXPECT_DEATH(ops::Matmul(h16, false, c, false, c), "in the bf16 mode\\), got bfloat16 cuda");
  // A bf16 c is overwritten only: accumulating into it (beta != 0) would round every partial sum.
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  EXPECT_DEATH(ops::Matmul(c, false, c, false, h16, 1.0, 1.0), "for c with beta 1");
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
}

TEST(CudaRuntimeTest, CachingAllocatorReusesAndReleases) {
  GDN_REQUIRE_GPU();
  ReleaseCachedMemory();  // blocks cached by earlier tests would be handed out first
  void* first = nullptr;
  {
    Tensor t = Tensor::Empty({1000, 333}, DType::kF32, kGpu);
    first = t.raw();
  }
  const size_t cached = cuda::DeviceCachedBytes();
  EXPECT_GE(cached, 1000u * 333u * 4u);
  {
    // A slightly smaller request gets the same (best-fitting) block back.
    Tensor t = Tensor::Empty({1000, 333 - 1}, DType::kF32, kGpu);
    EXPECT_EQ(t.raw(), first);
    EXPECT_LT(cuda::DeviceCachedBytes(), cached);
  }
  EXPECT_GE(ReleaseCachedMemory(), 1000u * 333u * 4u);
  EXPECT_EQ(cuda::DeviceCachedBytes(), 0u);
}

// The node-local rank from the launchers' variables, mpirun's first, then srun's, then MPICH's
// (no GPU needed: runs in CI too). The environment is restored afterwards.
TEST(CudaRuntimeTest, LocalRankFromTheLaunchersVariables) {
  const char* names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"};
  std::vector<std::optional<std::string>> saved;
  for (const char* name : names) {
    const char* v = std::getenv(name);
    saved.push_back(v ? std::optional<std::string>(v) : std::nullopt);
    unsetenv(name);
  }
  EXPECT_EQ(cuda::LocalRank(), 0);
  setenv("MPI_LOCALRANKID", "5", 1);
  EXPECT_EQ(cuda::LocalRank(), 5);
  setenv("SLURM_LOCALID", "3", 1);
  EXPECT_EQ(cuda::LocalRank(), 3);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2", 1);
  EXPECT_EQ(cuda::LocalRank(), 2);
  for (size_t i = 0; i < saved.size(); ++i) {
    if (saved[i]) setenv(names[i], saved[i]->c_str(), 1);
    else unsetenv(names[i]);
  }
}

TEST(CudaRuntimeTest, CurrentDeviceIsAVisibleOne) {
  GDN_REQUIRE_GPU();
  EXPECT_GE(cuda::CurrentDevice(), 0);
  EXPECT_LT(cuda::CurrentDevice(), cuda::VisibleDeviceCount());
}

// ---------------------------------------------------------------------------------------------
// Matrix products and elementwise ops.

TEST(CudaOpsTest, Matmul) {
  GDN_REQUIRE_GPU();
  struct Mkn { int64_t m, k, n; };
  for (const Mkn s : {Mkn{1, 1, 1}, Mkn{37, 65, 19}, Mkn{128, 256, 96}, Mkn{5, 0, 3}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (const double beta : {0.0, 0.3}) {
          if (s.k == 0 && beta == 0) continue;  // c = 0: nothing to compare
          const Tensor a = ta ? Rand({s.k, s.m}) : Rand({s.m, s.k});
          const Tensor b = tb ? Rand({s.n, s.k}) : Rand({s.k, s.n});
          const Tensor c = Rand({s.m, s.n});
          const Tensor dc = Dev(c);
          // A 1 x 1 output (one product plus beta c) can cancel to any degree (2.2e-5 of it was
          // seen): errors are measured against the terms' size too.
          const Tensor terms = AbsOf(c);
          ops::Matmul(AbsOf(a), ta, AbsOf(b), tb, terms, 0.7, beta);
          ops::Matmul(a, ta, b, tb, c, 0.7, beta);
          ops::Matmul(Dev(a), ta, Dev(b), tb, dc, 0.7, beta);
          Compare("Matmul", "c_ta" + std::to_string(ta) + "_tb" + std::to_string(tb), dc, c,
                  kTol, MaxAbs(terms));
        }
}

// float32 -> bf16, round to nearest even (finite inputs), as the GPU's operands are rounded.
float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// bf16 matrix products (ops::MatmulPrecision::kBfloat16): the product of the bf16-rounded
// operands with float32 accumulation, so the CPU's float32 product of the same rounded operands
// is the reference (float32 band); against the unrounded product only the bf16 band holds.
TEST(CudaOpsTest, MatmulBf16) {
  GDN_REQUIRE_GPU();
  struct Mkn { int64_t m, k, n; };
  for (const Mkn s : {Mkn{1, 1, 1}, Mkn{37, 65, 19}, Mkn{300, 512, 96}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const Tensor a = ta ? Rand({s.k, s.m}) : Rand({s.m, s.k});
        const Tensor b = tb ? Rand({s.n, s.k}) : Rand({s.k, s.n});
        const Tensor c = Rand({s.m, s.n}), exact = c.Clone(), dc = Dev(c);
        const Tensor ar = a.Clone(), br = b.Clone();
        for (const Tensor* t : {&ar, &br})
          for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = RoundBf16(t->data<float>()[i]);
        ops::Matmul(ar, ta, br, tb, c, 0.7, 0.3);
        ops::Matmul(a, ta, b, tb, exact, 0.7, 0.3);
        ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
        ops::Matmul(Dev(a), ta, Dev(b), tb, dc, 0.7, 0.3);
        ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
        const std::string what = "c_ta" + std::to_string(ta) + "_tb" + std::to_string(tb);
        Compare("MatmulBf16", what + "_vs_rounded", dc, c, kTol);
        // The bf16 band holds over many outputs; one output of a single product can cancel
        // against beta c (1.26 relative was seen for m = n = k = 1).
        if (s.m * s.n >= 100) Compare("MatmulBf16", what + "_vs_fp32", dc, exact, 1e-2);
      }
  // An operand that starts off a 16-byte boundary (a view from the second row of 65) is rounded
  // one value per thread instead of four.
  const Tensor big = Rand({38, 65}), b = Rand({65, 19}), c = Tensor::Zeros({37, 19}, DType::kF32);
  const Tensor ar = big.Rows(1, 38).Clone(), br = b.Clone();
  for (const Tensor* t : {&ar, &br})
    for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = RoundBf16(t->data<float>()[i]);
  ops::Matmul(ar, false, br, false, c);
  const Tensor dc = Dev(Tensor::Zeros({37, 19}, DType::kF32));
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  ops::Matmul(Dev(big).Rows(1, 38), false, Dev(b), false, dc);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  Compare("MatmulBf16", "c_unaligned_a", dc, c, kTol);
}

// ops::MatmulOperand: in the bf16 mode a bf16 copy holding the rounded values, which products take
// as they are, giving bit for bit what the float32 operand gives (rounded inside Matmul); in the
// float32 mode and on the CPU the tensor itself.
// Every element of `b16` (bf16, any device) is the bf16 rounding of `f`'s (float32): exactly.
void ExpectRoundingOf(const std::string& what, const Tensor& b16, const Tensor& f) {
  const Tensor hb = b16.To(Device::kCPU), hf = f.To(Device::kCPU);
  ASSERT_EQ(hb.dtype(), DType::kBF16) << what;
  ASSERT_EQ(hb.numel(), hf.numel()) << what;
  for (int64_t i = 0; i < hf.numel(); ++i)
    ASSERT_EQ(hb.at(i), RoundBf16(hf.data<float>()[i])) << what << " " << i;
}
// The two tensors hold the same values, bit for bit.
void ExpectBitEqual(const std::string& what, const Tensor& a, const Tensor& b) {
  const Tensor ha = a.To(Device::kCPU), hb = b.To(Device::kCPU);
  ASSERT_EQ(ha.numel(), hb.numel()) << what;
  for (int64_t i = 0; i < ha.numel(); ++i) ASSERT_EQ(ha.at(i), hb.at(i)) << what << " " << i;
}

// A CPU float32 tensor's values rounded to bf16 (CPU, float32), and the same values as a bf16 CUDA
// tensor: a [stored] input of the bf16 mode and the float32 values it stands for.
Tensor RoundedToBf16(const Tensor& host) {
  Tensor r = host.Clone();
  for (int64_t i = 0; i < r.numel(); ++i) r.data<float>()[i] = RoundBf16(r.data<float>()[i]);
  return r;
}
Tensor Bf16Dev(const Tensor& rounded) {
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  Tensor b16 = ops::MatmulOperand(Dev(rounded));
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  EXPECT_EQ(b16.dtype(), DType::kBF16);
  return b16;
}

TEST(CudaOpsTest, MatmulOperand) {
  GDN_REQUIRE_GPU();
  const Tensor a = Rand({300, 512}), b = Rand({96, 512});
  const Tensor da = Dev(a), db = Dev(b);
  EXPECT_EQ(ops::MatmulOperand(da).raw(), da.raw());
  EXPECT_EQ(ops::MatmulOperand(a).raw(), a.raw());
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  const Tensor a16 = ops::MatmulOperand(da), b16 = ops::MatmulOperand(db);
  EXPECT_EQ(ops::MatmulOperand(a).raw(), a.raw());  // the CPU computes in float32
  ASSERT_EQ(a16.shape(), a.shape());
  ExpectRoundingOf("MatmulOperand", a16, a);
  const Tensor c32 = Dev(Tensor::Zeros({300, 96}, DType::kF32)), c16 = c32.Clone();
  const Tensor cmix = c32.Clone();
  ops::Matmul(da, false, db, true, c32);
  ops::Matmul(a16, false, b16, true, c16);
  ops::Matmul(a16, false, db, true, cmix);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  ExpectBitEqual("Matmul bf16 operands", c16, c32);
  ExpectBitEqual("Matmul one bf16 operand", cmix, c32);
}

// Kept weight copies refreshed in one launch (ParameterSet::RoundOperands): pieces of many sizes
// (one spanning several 4096-value work items with a 3-value tail, an empty one, one of exactly 4
// values), some aligned on both sides (4-value loads) and some shifted by one value on the bf16
// side or read from an unaligned offset (the scalar loop), written into one buffer whose other
// values must stay as they were; each copy the bf16 rounding of its tensor.
TEST(CudaOpsTest, CopyToMatmulOperands) {
  GDN_REQUIRE_GPU();
  const Tensor src = Dev(Rand({20000}, -300, 300));
  struct Piece {
    int64_t begin, end, shift;  // src [begin, end) -> out [begin + shift, end + shift)
  };
  const std::vector<Piece> pieces = {
      {0, 9003, 0}, {9004, 9004, 0}, {9005, 9012, 1}, {9016, 9020, 0}, {10001, 19999, 1}};
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  const Tensor out = Dev(Tensor::Zeros({20000}, DType::kBF16));
  std::vector<Tensor> xs, outs;
  for (const Piece& p : pieces) {
    xs.push_back(src.Rows(p.begin, p.end));
    outs.push_back(out.Rows(p.begin + p.shift, p.end + p.shift));
  }
  ops::CopyToMatmulOperands(xs, outs);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  for (size_t i = 0; i < pieces.size(); ++i)
    ExpectRoundingOf("CopyToMatmulOperands piece " + std::to_string(i), outs[i], xs[i]);
  const Tensor host = out.To(Device::kCPU);
  std::vector<bool> written(20000, false);
  for (const Piece& p : pieces)
    for (int64_t j = p.begin + p.shift; j < p.end + p.shift; ++j) written[j] = true;
  for (int64_t j = 0; j < 20000; ++j)
    if (!written[j]) ASSERT_EQ(host.at(j), 0.0) << "outside every piece: " << j;
}

// The multi-tensor updates: pieces of many sizes (one spanning several 4096-element work items, an
// empty one) with gaps between them, each with its own rate and decay, against the CPU; the
// elements outside every piece must stay as they were. Offsets that are multiples of 4 take
// AdamW's 4-value loads (one with a 3-value tail), the others its scalar loop. A gradient scale
// (clipping's factor) gives bit for bit what scaling the gradients first gives.
TEST(CudaOpsTest, UpdatePieces) {
  GDN_REQUIRE_GPU();
  const int64_t n = 20000, s = 21000;
  const double rows[][5] = {{4008, 100, 7, 1e-2, 0.1},   {5, 200, 4000, 3e-3, 0},
                            {4100, 4300, 9000, 1e-3, 0.5}, {13200, 13400, 0, 1e-2, 0.1},
                            {13300, 13500, 6600, 2e-2, 0.01}};
  Tensor pieces = Tensor::Empty({5, 5}, DType::kF64);
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 5; ++c) pieces.set(r * 5 + c, rows[r][c]);
  for (int step : {1, 7}) {
    const double scale = step == 1 ? 1.0 : 0.37;
    const Tensor p = Rand({n}), g = Rand({n}), m = Rand({s}), v = Rand({s}, 0, 1);
    const Tensor dp = Dev(p), dm = Dev(m), dv = Dev(v);
    const Tensor dp2 = Dev(p), dm2 = Dev(m), dv2 = Dev(v), dg2 = Dev(g);
    ops::AdamWUpdatePieces(p, g, m, v, pieces, 0.9, 0.95, 1e-8, step, scale);
    ops::AdamWUpdatePieces(dp, Dev(g), dm, dv, pieces, 0.9, 0.95, 1e-8, step, scale);
    Compare("AdamWUpdatePieces", "p", dp, p, kTol);
    Compare("AdamWUpdatePieces", "m", dm, m, kTol);
    Compare("AdamWUpdatePieces", "v", dv, v, kTol);
    ops::Scale(dg2, scale);
    ops::AdamWUpdatePieces(dp2, dg2, dm2, dv2, pieces, 0.9, 0.95, 1e-8, step, 1.0);
    ExpectBitEqual("AdamWUpdatePieces scaled p", dp, dp2);
    ExpectBitEqual("AdamWUpdatePieces scaled m", dm, dm2);
    ExpectBitEqual("AdamWUpdatePieces scaled v", dv, dv2);
    const Tensor p0 = Rand({n}), buf = Rand({s});
    const Tensor sp = p0.Clone(), dsp = Dev(p0), dbuf = Dev(buf), dsp2 = Dev(p0), dbuf2 = Dev(buf);
    ops::SgdUpdatePieces(sp, g, buf, pieces, 0.9, scale);
    ops::SgdUpdatePieces(dsp, Dev(g), dbuf, pieces, 0.9, scale);
    Compare("SgdUpdatePieces", "p", dsp, sp, kTol);
    Compare("SgdUpdatePieces", "buf", dbuf, buf, kTol);
    ops::SgdUpdatePieces(dsp2, dg2, dbuf2, pieces, 0.9, 1.0);
    ExpectBitEqual("SgdUpdatePieces scaled p", dsp, dsp2);
    ExpectBitEqual("SgdUpdatePieces scaled buf", dbuf, dbuf2);
    // Elements 4 and 13150 lie in no piece.
    const Tensor back = dsp.To(kCpu);
    EXPECT_EQ(back.at(4), p0.at(4));
    EXPECT_EQ(back.at(13150), p0.at(13150));
    EXPECT_NE(back.at(5), p0.at(5));
  }
}

TEST(CudaOpsTest, ElementwiseAndReductions) {
  GDN_REQUIRE_GPU();
  for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 7}}) {
    const Tensor x = Rand({n}), y = Rand({n});
    const Tensor dx = Dev(x), dy = Dev(y), out = Tensor::Empty({n}, DType::kF32, kGpu);
    const Tensor cpu_out = Tensor::Empty({n}, DType::kF32);
    ops::Add(x, y, cpu_out);
    ops::Add(dx, dy, out);
    Compare("Add", "out", out, cpu_out, kTol);
    const Tensor ya = y.Clone(), dya = Dev(y);
    ops::Axpy(-0.37, x, ya);
    ops::Axpy(-0.37, dx, dya);
    Compare("Axpy", "y", dya, ya, kTol);
    ops::Scale(ya, 1.7);
    ops::Scale(dya, 1.7);
    Compare("Scale", "x", dya, ya, kTol);
    ops::Fill(ya, 0.25);
    ops::Fill(dya, 0.25);
    Compare("Fill", "x", dya, ya, 0);
    CompareScalar("SumSquares", ops::SumSquares(dx), ops::SumSquares(x), 1e-12);
    CompareScalar("MeanAbs", ops::MeanAbs(dx), ops::MeanAbs(x), 1e-12);
    EXPECT_TRUE(ops::AllFinite(dx));
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity()}) {
      const Tensor xb = x.Clone();
      xb.data<float>()[n / 2] = bad;
      EXPECT_FALSE(ops::AllFinite(Dev(xb))) << "n " << n;
    }
  }
}

TEST(CudaOpsTest, Swiglu) {
  GDN_REQUIRE_GPU();
  for (const Shape shape : {Shape{1, 3}, Shape{37, 96}, Shape{256, 1024}}) {
    const Tensor g = Rand(shape, -6, 6), u = Rand(shape), dh = Rand(shape);
    const Tensor h = Tensor::Empty(shape, DType::kF32), dg = Tensor::Empty(shape, DType::kF32),
                 du = Tensor::Empty(shape, DType::kF32);
    const Tensor hd = Tensor::Empty(shape, DType::kF32, kGpu),
                 dgd = Tensor::Empty(shape, DType::kF32, kGpu),
                 dud = Tensor::Empty(shape, DType::kF32, kGpu);
    ops::SwigluForward(g, u, h);
    ops::SwigluForward(Dev(g), Dev(u), hd);
    Compare("SwigluForward", "h", hd, h, kTol);
    ops::SwigluBackward(g, u, dh, dg, du);
    ops::SwigluBackward(Dev(g), Dev(u), Dev(dh), dgd, dud);
    Compare("SwigluBackward", "dgate", dgd, dg, kTol);
    Compare("SwigluBackward", "dup", dud, du, kTol);
  }
}

TEST(CudaOpsTest, Optimizers) {
  GDN_REQUIRE_GPU();
  for (const int64_t step : {int64_t{1}, int64_t{10}}) {
    const int64_t n = 10007;
    const Tensor p = Rand({n}), g = Rand({n}), m = Rand({n}, -0.1, 0.1), v = Rand({n}, 0, 0.01);
    const Tensor dp = Dev(p), dm = Dev(m), dv = Dev(v);
    ops::AdamWUpdate(p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
    ops::AdamWUpdate(dp, Dev(g), dm, dv, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
    Compare("AdamWUpdate", "p", dp, p, kTol);
    Compare("AdamWUpdate", "m", dm, m, kTol);
    Compare("AdamWUpdate", "v", dv, v, kTol);
    const Tensor buf = Rand({n}), dbuf = Dev(buf);
    ops::SgdUpdate(p, g, buf, 0.05, 0.9, 0.01);
    ops::SgdUpdate(dp, Dev(g), dbuf, 0.05, 0.9, 0.01);
    Compare("SgdUpdate", "p", dp, p, kTol);
    Compare("SgdUpdate", "buf", dbuf, buf, kTol);
  }
}

// ---------------------------------------------------------------------------------------------
// Norms.

TEST(CudaOpsTest, RmsNorm) {
  GDN_REQUIRE_GPU();
  // Rows of 128 m values take the register kernels (forward: m = 1, 2, 4, 8; backward: 4 m values
  // a thread, m up to 8 a thread); the rest the scalar ones, with more rows than the backward's
  // blocks (grid-stride), and a width whose per-block weight gradient needs more than 48 KB of
  // shared memory.
  for (const Shape shape : {Shape{1, 8}, Shape{37, 96}, Shape{300, 1024}, Shape{4800, 64},
                            Shape{3, 20000}, Shape{2100, 512}, Shape{20, 3072}, Shape{7, 8192},
                            Shape{9, 128}}) {
    const int64_t n = shape[0], d = shape[1];
    const Tensor x = Rand(shape, -3, 3), w = Rand({d}, 0.5, 1.5), dy = Rand(shape);
    const Tensor y = Tensor::Empty(shape, DType::kF32), r = Tensor::Empty({n}, DType::kF32);
    const Tensor yd = Tensor::Empty(shape, DType::kF32, kGpu),
                 rd = Tensor::Empty({n}, DType::kF32, kGpu);
    ops::RmsNormForward(x, w, 1e-6, y, r);
    ops::RmsNormForward(Dev(x), Dev(w), 1e-6, yd, rd);
    Compare("RmsNormForward", "y", yd, y, kTol);
    Compare("RmsNormForward", "rstd", rd, r, kTol);
    const Tensor res = Rand(shape, -3, 3);
    const Tensor h = Tensor::Empty(shape, DType::kF32), hd = Tensor::Empty(shape, DType::kF32, kGpu);
    ops::AddRmsNormForward(x, res, w, 1e-6, h, y, r);
    ops::AddRmsNormForward(Dev(x), Dev(res), Dev(w), 1e-6, hd, yd, rd);
    Compare("AddRmsNormForward", "h", hd, h, 0);
    Compare("AddRmsNormForward", "y", yd, y, kTol);
    Compare("AddRmsNormForward", "rstd", rd, r, kTol);
    const Tensor dw = Rand({d}), dwd = Dev(dw);  // accumulates into these values
    const Tensor dx = Tensor::Empty(shape, DType::kF32), dxd = Tensor::Empty(shape, DType::kF32, kGpu);
    ops::RmsNormBackward(x, w, r, dy, dx, dw);
    ops::RmsNormBackward(Dev(x), Dev(w), rd, Dev(dy), dxd, dwd);
    Compare("RmsNormBackward", "dx", dxd, dx, kTol);
    Compare("RmsNormBackward", "dw", dwd, dw, kTol);
    // Adding into a residual gradient, with its copy.
    const Tensor acc = Rand(shape), accd = Dev(acc);
    const Tensor copy = Tensor::Empty(shape, DType::kF32, kGpu);
    ops::RmsNormBackward(x, w, r, dy, acc, dw, true);
    ops::RmsNormBackward(Dev(x), Dev(w), rd, Dev(dy), accd, dwd, true, copy);
    Compare("RmsNormBackward", "dx_accumulated", accd, acc, kTol);
    Compare("RmsNormBackward", "dx_operand", copy, acc, kTol);
    Compare("RmsNormBackward", "dw_twice", dwd, dw, kTol);
  }
}

TEST(CudaOpsTest, L2NormHeads) {
  GDN_REQUIRE_GPU();
  for (const int64_t head_dim : {int64_t{64}, int64_t{128}, int64_t{20}})
    for (const int64_t n : {int64_t{1}, int64_t{70}}) {
      const Shape shape{n, 3 * head_dim};
      const Tensor x = Rand(shape), dy = Rand(shape);
      const Tensor y = Tensor::Empty(shape, DType::kF32), r = Tensor::Empty({n * 3}, DType::kF32);
      const Tensor yd = Tensor::Empty(shape, DType::kF32, kGpu),
                   rd = Tensor::Empty({n * 3}, DType::kF32, kGpu);
      ops::L2NormHeadsForward(x, head_dim, 1e-6, y, r);
      ops::L2NormHeadsForward(Dev(x), head_dim, 1e-6, yd, rd);
      Compare("L2NormHeadsForward", "y", yd, y, kTol);
      Compare("L2NormHeadsForward", "rnorm", rd, r, kTol);
      const Tensor dx = Tensor::Empty(shape, DType::kF32),
                   dxd = Tensor::Empty(shape, DType::kF32, kGpu);
      ops::L2NormHeadsBackward(y, r, dy, dx);
      ops::L2NormHeadsBackward(yd, rd, Dev(dy), dxd);
      Compare("L2NormHeadsBackward", "dx", dxd, dx, kTol);
    }
}

TEST(CudaOpsTest, GatedRmsNorm) {
  GDN_REQUIRE_GPU();
  // 3000 x 4 rows: more row groups than the backward's blocks (grid-stride). Heads of 128, 256
  // and 512 take the register kernel, 64 and 48 the scalar one.
  for (const int64_t head_dim : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{512}, int64_t{48}})
    for (const int64_t n : {int64_t{1}, int64_t{70}, int64_t{3000}}) {
      const Shape shape{n, 4 * head_dim};
      const Tensor o = Rand(shape, -2, 2), g = Rand(shape, -5, 5), w = Rand({head_dim}, 0.5, 1.5);
      const Tensor dy = Rand(shape);
      const Tensor y = Tensor::Empty(shape, DType::kF32), r = Tensor::Empty({n * 4}, DType::kF32);
      const Tensor yd = Tensor::Empty(shape, DType::kF32, kGpu),
                   rd = Tensor::Empty({n * 4}, DType::kF32, kGpu);
      ops::GatedRmsNormForward(o, g, w, head_dim, 1e-5, y, r);
      ops::GatedRmsNormForward(Dev(o), Dev(g), Dev(w), head_dim, 1e-5, yd, rd);
      Compare("GatedRmsNormForward", "y", yd, y, kTol);
      Compare("GatedRmsNormForward", "rstd", rd, r, kTol);
      const Tensor d_o = Tensor::Empty(shape, DType::kF32), dg = Tensor::Empty(shape, DType::kF32);
      const Tensor dod = Tensor::Empty(shape, DType::kF32, kGpu),
                   dgd = Tensor::Empty(shape, DType::kF32, kGpu);
      const Tensor dw = Rand({head_dim}), dwd = Dev(dw);
      const Tensor y2d = Tensor::Empty(shape, DType::kF32, kGpu);
      ops::GatedRmsNormBackward(o, g, w, r, head_dim, dy, d_o, dg, dw);
      ops::GatedRmsNormBackward(Dev(o), Dev(g), Dev(w), rd, head_dim, Dev(dy), dod, dgd, dwd, y2d);
      Compare("GatedRmsNormBackward", "d_o", dod, d_o, kTol);
      Compare("GatedRmsNormBackward", "dg", dgd, dg, kTol);
      Compare("GatedRmsNormBackward", "dw", dwd, dw, kTol);
      ExpectBitEqual("GatedRmsNormBackward y (the forward's)", y2d, yd);
    }
}

// ---------------------------------------------------------------------------------------------
// Short convolution and gates.

TEST(CudaOpsTest, CausalConvSilu) {
  GDN_REQUIRE_GPU();
  // Sequences shorter than, equal to and spanning several of the backward's 64-position segments.
  for (const Shape shape : {Shape{1, 1, 8}, Shape{2, 5, 96}, Shape{3, 70, 256}, Shape{1, 64, 130},
                            Shape{2, 130, 200}})
    for (const int64_t K : {int64_t{4}, int64_t{1}, int64_t{3}}) {
      const int64_t C = shape[2];
      const Tensor x = Rand(shape), w = Rand({C, K}), dy = Rand(shape);
      const Tensor y = Tensor::Empty(shape, DType::kF32);
      const Tensor yd = Tensor::Empty(shape, DType::kF32, kGpu);
      ops::CausalConvSiluForward(x, w, y);
      ops::CausalConvSiluForward(Dev(x), Dev(w), yd);
      Compare("CausalConvSiluForward", "y", yd, y, kTol);
      const Tensor dx = Tensor::Empty(shape, DType::kF32),
                   dxd = Tensor::Empty(shape, DType::kF32, kGpu);
      const Tensor dw = Rand({C, K}), dwd = Dev(dw);
      ops::CausalConvSiluBackward(x, w, dy, dx, dw);
      ops::CausalConvSiluBackward(Dev(x), Dev(w), Dev(dy), dxd, dwd);
      Compare("CausalConvSiluBackward", "dx", dxd, dx, kTol);
      Compare("CausalConvSiluBackward", "dw", dwd, dw, kTol);
    }
}

// The conv fused with the per-head L2 norm, forward and backward, against the CPU's two ops each
// way: heads of 32 to 256 channels (the fused kernels; heads of 8, and x at an offset that is
// not 4-value aligned, take the two ops), sequences shorter than and spanning several segments,
// float32 and bf16 x read through a column view, a head of zeros (weights of 0: normalised by
// eps alone) and very large inputs.
TEST(CudaOpsTest, CausalConvSiluL2Norm) {
  GDN_REQUIRE_GPU();
  for (const int64_t hd : {int64_t{128}, int64_t{32}, int64_t{64}, int64_t{256}, int64_t{8}})
    for (const int64_t T : {int64_t{1}, int64_t{5}, int64_t{33}, int64_t{64}, int64_t{130},
                            int64_t{1000}})
      for (const int64_t K : {int64_t{4}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{8}})
        for (const DType dt : {DType::kF32, DType::kBF16}) {
          const int64_t B = 2, C = 4 * hd, rows = B * T * 4;
          // 3: not 4-value aligned (the two ops)
          const int64_t offset = K == 3 && dt == DType::kBF16 ? 3 : 8;
          Tensor x = Rand({B * T, C}, -3, 3).To(dt).To(DType::kF32);  // exact in dt
          Tensor w = Rand({C, K});
          for (int64_t j = 0; j < K; ++j) w.set(j, 0.0);  // channel 0: all zeros
          for (int64_t j = 0; j < hd * K; ++j) w.set(hd * K + j, 0.0);  // the second head: zeros
          // A large channel: weights of 40 on inputs of one sign, so that its conv is large
          // everywhere (random signs cancel in some sums, leaving a small value with the large
          // terms' rounding: 1.4e-5 of the head's norm at K = 8, heads of 8).
          const int64_t big = 2 * hd + 1;
          for (int64_t j = 0; j < K; ++j) w.set(big * K + j, 40.0);
          for (int64_t i = 0; i < B * T; ++i) x.set(i * C + big, std::abs(x.at(i * C + big)));
          const Tensor y = Tensor::Empty({B, T, C}, DType::kF32);
          const Tensor rn = Tensor::Empty({rows}, DType::kF32);
          ops::CausalConvSiluL2NormForward(x.View({B, T, C}), w, hd, 1e-6, y, rn);
          // On the GPU: x in a wider buffer of type dt, read through a column view.
          Tensor buf = Tensor::Empty({B * T, C + 24}, dt);
          for (int64_t i = 0; i < buf.numel(); ++i) buf.set(i, 7.0);
          const Tensor view = buf.Columns(offset, offset + C);
          for (int64_t i = 0; i < x.numel(); ++i) view.set(i, x.at(i));
          const Tensor xd = Dev(buf).Columns(offset, offset + C);
          const Tensor yd = Tensor::Empty({B, T, C}, DType::kF32, kGpu);
          const Tensor rnd = Tensor::Empty({rows}, DType::kF32, kGpu);
          ops::CausalConvSiluL2NormForward(xd.View({B, T, C}), Dev(w), hd, 1e-6, yd, rnd);
          const std::string what = "head_dim " + std::to_string(hd) + " T " + std::to_string(T) +
                                   " K " + std::to_string(K) + " offset " +
                                   std::to_string(offset) + " " + DTypeName(dt);
          Compare("CausalConvSiluL2NormForward " + what, "y", yd, y, kTol);
          Compare("CausalConvSiluL2NormForward " + what, "rnorm", rnd, rn, kTol);

          // The backward from each side's forward outputs; dw accumulates; a bf16 dx is the
          // rounding of the float32 one.
          const Tensor dy = Rand({B, T, C}), dw0 = Rand({C, K});
          const Tensor dx = Tensor::Empty({B, T, C}, DType::kF32), dw = dw0.Clone();
          ops::CausalConvSiluL2NormBackward(x.View({B, T, C}), w, y, rn, dy, dx, dw);
          const Tensor dxd = Tensor::Empty({B, T, C}, DType::kF32, kGpu), dwd = Dev(dw0);
          const Tensor dx16 = Tensor::Empty({B, T, C}, DType::kBF16, kGpu), dwd2 = Dev(dw0);
          ops::CausalConvSiluL2NormBackward(xd.View({B, T, C}), Dev(w), yd, rnd, Dev(dy), dxd,
                                            dwd);
          ops::CausalConvSiluL2NormBackward(xd.View({B, T, C}), Dev(w), yd, rnd, Dev(dy), dx16,
                                            dwd2);
          // The norm's backward, dy - y (y . dy), cancels most digits in the head that one
          // large channel dominates (y there is nearly a unit vector): float32 sums in another
          // order differ there by up to 1.5e-5 (heads of 8 through the two ops, H200).
          Compare("CausalConvSiluL2NormBackward " + what, "dx", dxd, dx, 5 * kTol);
          Compare("CausalConvSiluL2NormBackward " + what, "dw", dwd, dw, kTol);
          ExpectRoundingOf("CausalConvSiluL2NormBackward bf16 dx " + what, dx16, dxd);
        }
}

// The [operand] outputs (kernels/op_set.inc): given a bf16 tensor, each op writes exactly the
// bf16 rounding of what it writes into a float32 one; the other outputs do not change.
TEST(CudaOpsTest, OperandOutputsAreRoundedFloat32Outputs) {
  GDN_REQUIRE_GPU();
  auto f32 = [](const Shape& s) { return Tensor::Empty(s, DType::kF32, kGpu); };
  auto bf16 = [](const Shape& s) { return Tensor::Empty(s, DType::kBF16, kGpu); };
  for (const Shape s : {Shape{37, 512}, Shape{5, 7}}) {  // 4 values a thread, and one
    const Tensor g = Dev(Rand(s, -6, 6)), u = Dev(Rand(s)), dh = Dev(Rand(s));
    const Tensor h = f32(s), h16 = bf16(s);
    ops::SwigluForward(g, u, h);
    ops::SwigluForward(g, u, h16);
    ExpectRoundingOf("SwigluForward h", h16, h);
    const Tensor dg = f32(s), du = f32(s), dg16 = bf16(s), du16 = bf16(s);
    const Tensor hb = f32(s), hb16 = bf16(s);
    ops::SwigluBackward(g, u, dh, dg, du, hb);
    ops::SwigluBackward(g, u, dh, dg16, du16, hb16);
    ExpectRoundingOf("SwigluBackward dgate", dg16, dg);
    ExpectRoundingOf("SwigluBackward dup", du16, du);
    ExpectBitEqual("SwigluBackward h (the forward's)", hb, h);
    ExpectRoundingOf("SwigluBackward h", hb16, h);
  }

  const int64_t head_dim = 128, n = 70;
  const Shape ns{n, 4 * head_dim};
  const Tensor o = Dev(Rand(ns, -2, 2)), gate = Dev(Rand(ns, -5, 5)), dy = Dev(Rand(ns));
  const Tensor w = Dev(Rand({head_dim}, 0.5, 1.5)), r = f32({n * 4}), r2 = f32({n * 4});
  const Tensor y = f32(ns), y16 = bf16(ns);
  ops::GatedRmsNormForward(o, gate, w, head_dim, 1e-5, y, r);
  ops::GatedRmsNormForward(o, gate, w, head_dim, 1e-5, y16, r2);
  ExpectRoundingOf("GatedRmsNormForward y", y16, y);
  ExpectBitEqual("GatedRmsNormForward rstd", r2, r);
  const Tensor d_o = f32(ns), d_o2 = f32(ns), dgn = f32(ns), dgn16 = bf16(ns);
  const Tensor dw = Dev(Tensor::Zeros({head_dim}, DType::kF32)), dw2 = dw.Clone();
  const Tensor yb16 = bf16(ns);
  ops::GatedRmsNormBackward(o, gate, w, r, head_dim, dy, d_o, dgn, dw);
  ops::GatedRmsNormBackward(o, gate, w, r, head_dim, dy, d_o2, dgn16, dw2, yb16);
  ExpectRoundingOf("GatedRmsNormBackward dg", dgn16, dgn);
  ExpectRoundingOf("GatedRmsNormBackward y", yb16, y);
  ExpectBitEqual("GatedRmsNormBackward d_o", d_o2, d_o);
  ExpectBitEqual("GatedRmsNormBackward dw", dw2, dw);
  // d_o (the recurrence's output gradient) in bf16, by the register kernel (heads of 128) and the
  // scalar one (heads of 96).
  for (const int64_t hd : {int64_t{128}, int64_t{96}}) {
    const Shape ds{n, 4 * hd};
    const Tensor o2 = Dev(Rand(ds, -2, 2)), g2 = Dev(Rand(ds, -5, 5)), dy2 = Dev(Rand(ds));
    const Tensor w2 = Dev(Rand({hd}, 0.5, 1.5)), r3 = f32({n * 4});
    ops::GatedRmsNormForward(o2, g2, w2, hd, 1e-5, f32(ds), r3);
    const Tensor e = f32(ds), e16 = bf16(ds), dg3 = f32(ds), dg4 = f32(ds);
    const Tensor dw3 = Dev(Tensor::Zeros({hd}, DType::kF32)), dw4 = dw3.Clone();
    ops::GatedRmsNormBackward(o2, g2, w2, r3, hd, dy2, e, dg3, dw3);
    ops::GatedRmsNormBackward(o2, g2, w2, r3, hd, dy2, e16, dg4, dw4);
    ExpectRoundingOf("GatedRmsNormBackward d_o", e16, e);
    ExpectBitEqual("GatedRmsNormBackward dg (bf16 d_o)", dg4, dg3);
    ExpectBitEqual("GatedRmsNormBackward dw (bf16 d_o)", dw4, dw3);
  }
  // The conv's output (the recurrence's inputs) in bf16: the warp kernels (256 channels, heads of
  // 128) and the per-channel kernel and the two-op norm (96 channels, heads of 48).
  for (const int64_t C : {int64_t{256}, int64_t{96}}) {
    const Shape cs{2, 130, C};
    const int64_t hd = C == 256 ? 128 : 48;
    const Tensor x = Dev(Rand(cs)), cw = Dev(Rand({C, 4}));
    const Tensor cy = f32(cs), cy16 = bf16(cs);
    ops::CausalConvSiluForward(x, cw, cy);
    ops::CausalConvSiluForward(x, cw, cy16);
    ExpectRoundingOf("CausalConvSiluForward y", cy16, cy);
    const Tensor ny = f32(cs), ny16 = bf16(cs), rn = f32({2 * 130 * C / hd}), rn2 = rn.Clone();
    ops::CausalConvSiluL2NormForward(x, cw, hd, 1e-6, ny, rn);
    ops::CausalConvSiluL2NormForward(x, cw, hd, 1e-6, ny16, rn2);
    ExpectRoundingOf("CausalConvSiluL2NormForward y", ny16, ny);
    ExpectBitEqual("CausalConvSiluL2NormForward rnorm (bf16 y)", rn2, rn);
  }

  const Shape rs{37, 1024};
  const Tensor rx = Dev(Rand(rs, -3, 3)), res = Dev(Rand(rs)), rw = Dev(Rand({1024}, 0.5, 1.5));
  const Tensor ry = f32(rs), ry16 = bf16(rs), rr = f32({37}), rr2 = f32({37});
  ops::RmsNormForward(rx, rw, 1e-6, ry, rr);
  ops::RmsNormForward(rx, rw, 1e-6, ry16, rr2);
  ExpectRoundingOf("RmsNormForward y", ry16, ry);
  ExpectBitEqual("RmsNormForward rstd", rr2, rr);
  const Tensor h = f32(rs), h2 = f32(rs);
  ops::AddRmsNormForward(rx, res, rw, 1e-6, h, ry, rr);
  ops::AddRmsNormForward(rx, res, rw, 1e-6, h2, ry16, rr2);
  ExpectRoundingOf("AddRmsNormForward y", ry16, ry);
  ExpectBitEqual("AddRmsNormForward h", h2, h);
  const Tensor rdy = Dev(Rand(rs)), rdx = f32(rs), rdx16 = bf16(rs);
  const Tensor rdw = Dev(Tensor::Zeros({1024}, DType::kF32));
  ops::RmsNormBackward(rx, rw, rr, rdy, rdx, rdw, false, rdx16);
  ExpectRoundingOf("RmsNormBackward dx_operand", rdx16, rdx);

  const Shape cs{2, 130, 96};  // a sequence spanning three of the backward's segments
  const Tensor x = Dev(Rand(cs)), cw = Dev(Rand({96, 4})), cdy = Dev(Rand(cs));
  const Tensor dx = f32(cs), dx16 = bf16(cs);
  const Tensor cdw = Dev(Tensor::Zeros({96, 4}, DType::kF32)), cdw2 = cdw.Clone();
  ops::CausalConvSiluBackward(x, cw, cdy, dx, cdw);
  ops::CausalConvSiluBackward(x, cw, cdy, dx16, cdw2);
  ExpectRoundingOf("CausalConvSiluBackward dx", dx16, dx);
  ExpectBitEqual("CausalConvSiluBackward dw", cdw2, cdw);

  for (const int64_t V : {int64_t{32000}, int64_t{50257}}) {  // rows in registers, and not
    const Shape ls{5, V};
    const Tensor logits = Dev(Rand(ls, -8, 8)), tgt = Dev(RandTokens(5, 0, V));
    const Tensor dl = f32(ls), dl16 = bf16(ls);
    const double loss = ops::CrossEntropy(logits, tgt, dl, 0.5);
    EXPECT_EQ(ops::CrossEntropy(logits, tgt, dl16, 0.5), loss);
    ExpectRoundingOf("CrossEntropy dlogits", dl16, dl);
  }
  const Tensor sl = Dev(Rand({5, 300}, -8, 8)), st = Dev(RandTokens(5, 0, 1000));
  const Tensor mx = f32({5}), se = f32({5}), tl = f32({5});
  ops::RowMax(sl, mx);
  ops::SoftmaxRowStats(sl, st, 100, mx, se, tl);
  const Tensor sdl = f32({5, 300}), sdl16 = bf16({5, 300});
  ops::CrossEntropyFromStats(sl, st, 100, mx, se, tl, sdl, 0.5);
  ops::CrossEntropyFromStats(sl, st, 100, mx, se, tl, sdl16, 0.5);
  ExpectRoundingOf("CrossEntropyFromStats dlogits", sdl16, sdl);
}

// Column views (Tensor::Columns) as outputs and operands, as the mixer's backward passes them:
// each op writes in its columns what it writes into a contiguous tensor (float32 bit for bit,
// bf16 its rounding) and nothing outside them.
struct GpuColumns {
  Tensor buffer, view;  // buffer [rows, width] of sevens on the GPU; view its columns
  int64_t offset;
};
GpuColumns ColumnsOf(int64_t rows, int64_t cols, int64_t offset, int64_t width, DType dt) {
  Tensor host = Tensor::Empty({rows, width}, dt);
  for (int64_t i = 0; i < host.numel(); ++i) host.set(i, 7.0);
  const Tensor buffer = Dev(host);
  return {buffer, buffer.Columns(offset, offset + cols), offset};
}
void ExpectColumnsHold(const std::string& what, const GpuColumns& c, const Tensor& want_dev) {
  const Tensor buf = c.buffer.To(kCpu), want = want_dev.To(kCpu);
  const int64_t width = buf.dim(1), cols = c.view.dim(1);
  ASSERT_EQ(want.numel(), c.view.numel()) << what;
  const bool bf16 = buf.dtype() == DType::kBF16;
  for (int64_t i = 0; i < buf.numel(); ++i) {
    const int64_t r = i / width, j = i % width - c.offset;
    if (j < 0 || j >= cols) {
      ASSERT_EQ(buf.at(i), 7.0) << what << ": wrote outside its columns at " << i;
      continue;
    }
    const double w = want.at(r * cols + j);
    ASSERT_EQ(buf.at(i), bf16 ? RoundBf16(static_cast<float>(w)) : w) << what << " " << i;
  }
}

TEST(CudaOpsTest, ColumnViews) {
  GDN_REQUIRE_GPU();
  for (const DType dt : {DType::kF32, DType::kBF16}) {
    const std::string type = DTypeName(dt);
    // The gated norm's dg, rows of 4 heads: head_dim 128 (register kernel), 48 (scalar kernel).
    for (const int64_t hd : {int64_t{128}, int64_t{48}}) {
      const int64_t n = 37, heads = 4;
      const Shape ns{n, heads * hd};
      const Tensor o = Dev(Rand(ns, -2, 2)), g = Dev(Rand(ns, -5, 5)), dy = Dev(Rand(ns));
      const Tensor w = Dev(Rand({hd}, 0.5, 1.5));
      const Tensor y = Tensor::Empty(ns, DType::kF32, kGpu);
      const Tensor r = Tensor::Empty({n * heads}, DType::kF32, kGpu);
      ops::GatedRmsNormForward(o, g, w, hd, 1e-5, y, r);
      const Tensor d_o = Tensor::Empty(ns, DType::kF32, kGpu), dg = d_o.Clone();
      const Tensor dw = Dev(Tensor::Zeros({hd}, DType::kF32));
      ops::GatedRmsNormBackward(o, g, w, r, hd, dy, d_o, dg, dw);
      const GpuColumns c = ColumnsOf(n, heads * hd, 8, heads * hd + 24, dt);
      ops::GatedRmsNormBackward(o, g, w, r, hd, dy, d_o, c.view, dw);
      ExpectColumnsHold("GatedRmsNormBackward dg " + type + " head_dim " + std::to_string(hd),
                        c, dg);
    }
    {  // the conv's dx: a sequence over three segments
      const int64_t B = 2, T = 130, C = 96;
      const Tensor x = Dev(Rand({B, T, C})), cw = Dev(Rand({C, 4})), dy = Dev(Rand({B, T, C}));
      const Tensor dx = Tensor::Empty({B, T, C}, DType::kF32, kGpu);
      const Tensor dw = Dev(Tensor::Zeros({C, 4}, DType::kF32));
      ops::CausalConvSiluBackward(x, cw, dy, dx, dw);
      const GpuColumns c = ColumnsOf(B * T, C, 16, C + 40, dt);
      ops::CausalConvSiluBackward(x, cw, dy, c.view.View({B, T, C}), dw);
      ExpectColumnsHold("CausalConvSiluBackward dx " + type, c, dx);
    }
    {  // the gates' da and db
      const int64_t n = 70, hv = 6;
      const Tensor a = Dev(Rand({n, hv}, -30, 30)), b = Dev(Rand({n, hv}, -6, 6));
      const Tensor al = Dev(Rand({hv}, -2, 2)), dt_b = Dev(Rand({hv}, -1, 1));
      const Tensor dgm = Dev(Rand({n, hv})), dbe = Dev(Rand({n, hv}));
      const Tensor da = Tensor::Empty({n, hv}, DType::kF32, kGpu), db = da.Clone();
      const Tensor dal = Dev(Tensor::Zeros({hv}, DType::kF32)), ddt = dal.Clone();
      const Tensor dal2 = dal.Clone(), ddt2 = dal.Clone();
      ops::GatesBackward(a, b, al, dt_b, 2.0, dgm, dbe, da, db, dal, ddt);
      const GpuColumns ca = ColumnsOf(n, hv, 3, 16, dt);
      const GpuColumns cb{ca.buffer, ca.buffer.Columns(9, 9 + hv), 9};
      ops::GatesBackward(a, b, al, dt_b, 2.0, dgm, dbe, ca.view, cb.view, dal2, ddt2);
      const Tensor buf = ca.buffer.To(kCpu), hda = da.To(kCpu), hdb = db.To(kCpu);
      const bool bf16 = dt == DType::kBF16;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < 16; ++j) {
          const double got = buf.at(i * 16 + j);
          double want = 7.0;
          if (j >= 3 && j < 3 + hv) want = hda.at(i * hv + j - 3);
          if (j >= 9 && j < 9 + hv) want = hdb.at(i * hv + j - 9);
          if (bf16 && want != 7.0) want = RoundBf16(static_cast<float>(want));
          ASSERT_EQ(got, want) << "GatesBackward " << type << " row " << i << " column " << j;
        }
      ExpectBitEqual("GatesBackward da_log " + type, dal2, dal);
      ExpectBitEqual("GatesBackward ddt_bias " + type, ddt2, ddt);
    }
  }
  {  // SetZero on a column view (the mixer zeroes the gaps between its columns this way)
    const GpuColumns c = ColumnsOf(70, 6, 3, 16, DType::kBF16);
    c.view.SetZero();
    const Tensor buf = c.buffer.To(kCpu);
    for (int64_t i = 0; i < buf.numel(); ++i)
      ASSERT_EQ(buf.at(i), i % 16 >= 3 && i % 16 < 9 ? 0.0 : 7.0) << "SetZero " << i;
  }
  // Matmul with column-view operands (bf16, the bf16 mode): dy^T x and dy W of the mixer.
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  const int64_t m = 300, k = 96, n = 64;
  const GpuColumns a = ColumnsOf(m, k, 8, k + 24, DType::kBF16);
  const Tensor a_dense = ops::MatmulOperand(Dev(Rand({m, k})));
  Tensor a_host = a.buffer.To(kCpu);
  const Tensor a_dense_host = a_dense.To(kCpu);
  for (int64_t i = 0; i < m * k; ++i) a_host.Columns(8, 8 + k).set(i, a_dense_host.at(i));
  a.buffer.CopyFrom(a_host);
  const Tensor b = Dev(Rand({k, n})), x = Dev(Rand({m, n}));
  const Tensor c_view = Tensor::Empty({m, n}, DType::kF32, kGpu), c_dense = c_view.Clone();
  ops::Matmul(a.view, false, b, false, c_view);
  ops::Matmul(a_dense, false, b, false, c_dense);
  const Tensor ct_view = Tensor::Empty({k, n}, DType::kF32, kGpu), ct_dense = ct_view.Clone();
  ops::Matmul(a.view, true, x, false, ct_view);
  ops::Matmul(a_dense, true, x, false, ct_dense);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  Compare("Matmul", "a column view", c_view, c_dense.To(kCpu), kTol);
  Compare("Matmul", "a column view, transposed", ct_view, ct_dense.To(kCpu), kTol);
}

// Column-view inputs (the mixer's projections, columns of one product's output): the same
// values read through a column view give the same outputs bit for bit, float32 and bf16.
TEST(CudaOpsTest, ColumnViewInputs) {
  GDN_REQUIRE_GPU();
  // x's values (rounded to dt) on the GPU, contiguous and as columns [offset, +cols) of a wider
  // buffer.
  auto both = [](const Tensor& x, DType dt, int64_t offset, int64_t width) {
    const Tensor host = x.To(dt);
    const int64_t cols = x.dim(-1), rows = x.numel() / cols;
    Tensor buf = Tensor::Empty({rows, width}, dt);
    for (int64_t i = 0; i < buf.numel(); ++i) buf.set(i, 7.0);
    const Tensor view = buf.Columns(offset, offset + cols);
    for (int64_t i = 0; i < host.numel(); ++i) view.set(i, host.at(i));
    return std::pair{Dev(host), Dev(buf).Columns(offset, offset + cols)};
  };
  auto f32 = [](const Shape& s) { return Tensor::Empty(s, DType::kF32, kGpu); };
  for (const DType dt : {DType::kF32, DType::kBF16}) {
    const std::string type = DTypeName(dt);
    for (const int64_t C : {int64_t{96}, int64_t{128}}) {  // the conv's x (both kernels)
      const int64_t B = 2, T = 130;
      const auto [x, xv] = both(Rand({B * T, C}), dt, 8, C + 40);
      const Tensor w = Dev(Rand({C, 4})), dy = Dev(Rand({B, T, C}));
      const Tensor y = f32({B, T, C}), y2 = f32({B, T, C});
      ops::CausalConvSiluForward(x.View({B, T, C}), w, y);
      ops::CausalConvSiluForward(xv.View({B, T, C}), w, y2);
      ExpectBitEqual("conv forward " + type, y2, y);
      const Tensor dx = f32({B, T, C}), dx2 = f32({B, T, C});
      const Tensor dw = Dev(Tensor::Zeros({C, 4}, DType::kF32)), dw2 = dw.Clone();
      ops::CausalConvSiluBackward(x.View({B, T, C}), w, dy, dx, dw);
      ops::CausalConvSiluBackward(xv.View({B, T, C}), w, dy, dx2, dw2);
      ExpectBitEqual("conv backward dx " + type, dx2, dx);
      ExpectBitEqual("conv backward dw " + type, dw2, dw);
    }
    for (const int64_t hd : {int64_t{128}, int64_t{48}}) {  // the gated norm's g
      const int64_t n = 37, heads = 4;
      const Shape ns{n, heads * hd};
      const auto [g, gv] = both(Rand(ns, -5, 5), dt, 16, heads * hd + 48);
      const Tensor o = Dev(Rand(ns, -2, 2)), dy = Dev(Rand(ns)), w = Dev(Rand({hd}, 0.5, 1.5));
      const Tensor y = f32(ns), y2 = f32(ns), r = f32({n * heads}), r2 = f32({n * heads});
      ops::GatedRmsNormForward(o, g, w, hd, 1e-5, y, r);
      ops::GatedRmsNormForward(o, gv, w, hd, 1e-5, y2, r2);
      const std::string what = "gated norm " + type + " head_dim " + std::to_string(hd);
      ExpectBitEqual(what + " forward", y2, y);
      const Tensor d_o = f32(ns), d_o2 = f32(ns), dg = f32(ns), dg2 = f32(ns);
      const Tensor dw = Dev(Tensor::Zeros({hd}, DType::kF32)), dw2 = dw.Clone();
      ops::GatedRmsNormBackward(o, g, w, r, hd, dy, d_o, dg, dw);
      ops::GatedRmsNormBackward(o, gv, w, r, hd, dy, d_o2, dg2, dw2);
      ExpectBitEqual(what + " backward d_o", d_o2, d_o);
      ExpectBitEqual(what + " backward dg", dg2, dg);
      ExpectBitEqual(what + " backward dw", dw2, dw);
    }
    {  // the gates' a and b
      const int64_t n = 70, hv = 6;
      const auto [a, av] = both(Rand({n, hv}, -30, 30), dt, 0, 24);
      const auto [b, bv] = both(Rand({n, hv}, -6, 6), dt, 8, 24);
      const Tensor al = Dev(Rand({hv}, -2, 2)), dtb = Dev(Rand({hv}, -1, 1));
      const Tensor gm = f32({n, hv}), be = f32({n, hv}), gm2 = f32({n, hv}), be2 = f32({n, hv});
      ops::GatesForward(a, b, al, dtb, 2.0, gm, be);
      ops::GatesForward(av, bv, al, dtb, 2.0, gm2, be2);
      ExpectBitEqual("gates forward gamma " + type, gm2, gm);
      ExpectBitEqual("gates forward beta " + type, be2, be);
      const Tensor dgm = Dev(Rand({n, hv})), dbe = Dev(Rand({n, hv}));
      const Tensor da = f32({n, hv}), db = f32({n, hv}), da2 = f32({n, hv}), db2 = f32({n, hv});
      const Tensor dal = Dev(Tensor::Zeros({hv}, DType::kF32)), ddt = dal.Clone();
      const Tensor dal2 = dal.Clone(), ddt2 = dal.Clone();
      ops::GatesBackward(a, b, al, dtb, 2.0, dgm, dbe, da, db, dal, ddt);
      ops::GatesBackward(av, bv, al, dtb, 2.0, dgm, dbe, da2, db2, dal2, ddt2);
      ExpectBitEqual("gates backward da " + type, da2, da);
      ExpectBitEqual("gates backward db " + type, db2, db);
      ExpectBitEqual("gates backward da_log " + type, dal2, dal);
      ExpectBitEqual("gates backward ddt_bias " + type, ddt2, ddt);
    }
  }
}

// The [stored] inputs (kernels/op_set.inc): a bf16 tensor gives bit for bit what a float32 tensor
// holding the same (rounded) values gives. And Matmul's bf16 c (beta 0, the bf16 mode): the float32
// product rounded once, within a bf16 rounding.
TEST(CudaOpsTest, StoredInputsAreReadAsTheirFloat32Values) {
  GDN_REQUIRE_GPU();
  auto f32 = [](const Shape& s) { return Tensor::Empty(s, DType::kF32, kGpu); };
  // A random tensor's bf16 form (device) and the same values in float32 (device).
  auto pair = [](const Shape& s, double lo, double hi) {
    const Tensor r = RoundedToBf16(Rand(s, lo, hi));
    return std::pair<Tensor, Tensor>{Bf16Dev(r), Dev(r)};
  };
  for (const Shape s : {Shape{37, 512}, Shape{5, 7}}) {  // 4 values a thread, and one
    const auto [g16, g] = pair(s, -6, 6);
    const auto [u16, u] = pair(s, -1, 1);
    const Tensor dh = Dev(Rand(s));
    const Tensor h = f32(s), h2 = f32(s);
    ops::SwigluForward(g, u, h);
    ops::SwigluForward(g16, u16, h2);
    ExpectBitEqual("SwigluForward h", h2, h);
    const Tensor dg = f32(s), du = f32(s), dg2 = f32(s), du2 = f32(s);
    ops::SwigluBackward(g, u, dh, dg, du);
    ops::SwigluBackward(g16, u16, dh, dg2, du2);
    ExpectBitEqual("SwigluBackward dgate", dg2, dg);
    ExpectBitEqual("SwigluBackward dup", du2, du);
  }

  // The gated norm: g (the projection's output) in bf16, and o (the recurrence's output) in bf16,
  // by the register kernel (heads of 128) and the scalar one (heads of 96). (o, g) and (o2, g2)
  // hold the same values; the outputs must be equal bit for bit.
  const int64_t n = 70;
  auto gated_norm = [&](const std::string& what, int64_t hd, const Tensor& o, const Tensor& g,
                        const Tensor& o2, const Tensor& g2) {
    const Shape s = o.shape();
    const Tensor dy = Dev(Rand(s)), w = Dev(Rand({hd}, 0.5, 1.5));
    const Tensor y = f32(s), y2 = f32(s), r = f32({n * 4}), r2 = f32({n * 4});
    ops::GatedRmsNormForward(o, g, w, hd, 1e-5, y, r);
    ops::GatedRmsNormForward(o2, g2, w, hd, 1e-5, y2, r2);
    ExpectBitEqual("GatedRmsNormForward y (" + what + ")", y2, y);
    ExpectBitEqual("GatedRmsNormForward rstd (" + what + ")", r2, r);
    const Tensor d_o = f32(s), d_o2 = f32(s), dg = f32(s), dg2 = f32(s);
    const Tensor dw = Dev(Rand({hd})), dw2 = dw.Clone();
    ops::GatedRmsNormBackward(o, g, w, r, hd, dy, d_o, dg, dw);
    ops::GatedRmsNormBackward(o2, g2, w, r, hd, dy, d_o2, dg2, dw2);
    ExpectBitEqual("GatedRmsNormBackward d_o (" + what + ")", d_o2, d_o);
    ExpectBitEqual("GatedRmsNormBackward dg (" + what + ")", dg2, dg);
    ExpectBitEqual("GatedRmsNormBackward dw (" + what + ")", dw2, dw);
  };
  {
    const Shape ns{n, 4 * 128};
    const Tensor o = Dev(Rand(ns, -2, 2));
    const auto [g16, g] = pair(ns, -5, 5);
    gated_norm("bf16 g", 128, o, g, o, g16);
  }
  for (const int64_t hd : {int64_t{128}, int64_t{96}}) {
    const Shape os{n, 4 * hd};
    const auto [o16, o] = pair(os, -2, 2);
    const Tensor g = Dev(Rand(os, -5, 5));
    gated_norm("bf16 o", hd, o, g, o16, g);
  }
  // The conv backwards' dy (the recurrence's input gradients) and the norm's y in bf16: the warp
  // kernels (256 channels, heads of 128; y is not read there) and the per-channel kernel and the
  // two-op norm (96 channels, heads of 48).
  for (const int64_t C : {int64_t{256}, int64_t{96}}) {
    const Shape cs{2, 130, C};
    const int64_t hd = C == 256 ? 128 : 48;
    const Tensor x = Dev(Rand(cs)), cw = Dev(Rand({C, 4}));
    const auto [dy16, dyf] = pair(cs, -1, 1);
    const Tensor dx = f32(cs), dx2 = f32(cs), cdw = Dev(Rand({C, 4})), cdw2 = cdw.Clone();
    ops::CausalConvSiluBackward(x, cw, dyf, dx, cdw);
    ops::CausalConvSiluBackward(x, cw, dy16, dx2, cdw2);
    ExpectBitEqual("CausalConvSiluBackward dx (bf16 dy)", dx2, dx);
    ExpectBitEqual("CausalConvSiluBackward dw (bf16 dy)", cdw2, cdw);
    const Tensor ny = f32(cs), rn = f32({2 * 130 * C / hd});
    ops::CausalConvSiluL2NormForward(x, cw, hd, 1e-6, ny, rn);
    const Tensor yr = RoundedToBf16(ny.To(kCpu));
    const Tensor y16 = Bf16Dev(yr), yf = Dev(yr);
    const Tensor nx = f32(cs), nx2 = f32(cs), ndw = Dev(Rand({C, 4})), ndw2 = ndw.Clone();
    ops::CausalConvSiluL2NormBackward(x, cw, yf, rn, dyf, nx, ndw);
    ops::CausalConvSiluL2NormBackward(x, cw, y16, rn, dy16, nx2, ndw2);
    ExpectBitEqual("CausalConvSiluL2NormBackward dx (bf16 y, dy)", nx2, nx);
    ExpectBitEqual("CausalConvSiluL2NormBackward dw (bf16 y, dy)", ndw2, ndw);
  }

  for (const int64_t K : {int64_t{4}, int64_t{2}}) {
    const Shape cs{2, 130, 96};  // a sequence spanning three of the backward's segments
    const auto [x16, x] = pair(cs, -1, 1);
    const Tensor cw = Dev(Rand({96, K})), cdy = Dev(Rand(cs));
    const Tensor cy = f32(cs), cy2 = f32(cs);
    ops::CausalConvSiluForward(x, cw, cy);
    ops::CausalConvSiluForward(x16, cw, cy2);
    ExpectBitEqual("CausalConvSiluForward y", cy2, cy);
    const Tensor dx = f32(cs), dx2 = f32(cs);
    const Tensor cdw = Dev(Rand({96, K})), cdw2 = cdw.Clone();
    ops::CausalConvSiluBackward(x, cw, cdy, dx, cdw);
    ops::CausalConvSiluBackward(x16, cw, cdy, dx2, cdw2);
    ExpectBitEqual("CausalConvSiluBackward dx", dx2, dx);
    ExpectBitEqual("CausalConvSiluBackward dw", cdw2, cdw);
  }

  // The loss over bf16 logits (the bf16 mode's head writes them), with rows in registers (1000,
  // 32000) and not (10, 50257): the same loss and gradient; written over its logits, the
  // gradient's rounding.
  for (const int64_t V : {int64_t{10}, int64_t{1000}, int64_t{32000}, int64_t{50257}}) {
    const Shape ls{6, V};
    const auto [l16, l] = pair(ls, -8, 8);
    const Tensor tgt = Dev(RandTokens(6, 0, V)), dl = f32(ls), dl2 = f32(ls);
    const double loss = ops::CrossEntropy(l, tgt, dl, 0.5);
    EXPECT_EQ(ops::CrossEntropy(l16, tgt, dl2, 0.5), loss) << V;
    ExpectBitEqual("CrossEntropy dlogits from bf16 logits", dl2, dl);
    EXPECT_EQ(ops::CrossEntropy(l16, tgt, Tensor()), ops::CrossEntropy(l, tgt, Tensor())) << V;
    EXPECT_EQ(ops::CrossEntropy(l16, tgt, l16, 0.5), loss) << V;
    ExpectRoundingOf("CrossEntropy dlogits over bf16 logits", l16, dl);
  }
  {
    const Shape vs{6, 300};
    const auto [l16, l] = pair(vs, -8, 8);
    const Tensor tgt = Dev(RandTokens(6, 0, 1000));
    const Tensor mx = f32({6}), mx2 = f32({6}), se = f32({6}), se2 = f32({6});
    const Tensor tl = f32({6}), tl2 = f32({6}), dl = f32(vs), dl2 = f32(vs);
    ops::RowMax(l, mx);
    ops::RowMax(l16, mx2);
    ExpectBitEqual("RowMax of bf16 logits", mx2, mx);
    ops::SoftmaxRowStats(l, tgt, 100, mx, se, tl);
    ops::SoftmaxRowStats(l16, tgt, 100, mx, se2, tl2);
    ExpectBitEqual("SoftmaxRowStats sum_exp of bf16 logits", se2, se);
    ExpectBitEqual("SoftmaxRowStats target_logit of bf16 logits", tl2, tl);
    const double loss = ops::CrossEntropyFromStats(l, tgt, 100, mx, se, tl, dl, 0.5);
    EXPECT_EQ(ops::CrossEntropyFromStats(l16, tgt, 100, mx, se, tl, dl2, 0.5), loss);
    ExpectBitEqual("CrossEntropyFromStats dlogits from bf16 logits", dl2, dl);
  }

  // Matmul into a bf16 c, as LinearForward's stored outputs: against the float32 c of the same
  // bf16 products, |c16 - c| <= 2^-8 |c| (one rounding is at most 2^-9; cuBLAS may sum in another
  // order for the bf16 output).
  const Tensor a = Dev(Rand({300, 512})), b = Dev(Rand({96, 512}));
  const Tensor c = f32({300, 96}), c16 = Tensor::Empty({300, 96}, DType::kBF16, kGpu);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBfloat16);
  ops::Matmul(a, false, b, true, c);
  ops::Matmul(a, false, b, true, c16);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFloat32);
  const Tensor hc = c.To(kCpu), hc16 = c16.To(kCpu);
  for (int64_t i = 0; i < hc.numel(); ++i)
    ASSERT_LE(std::abs(hc16.at(i) - hc.at(i)), std::ldexp(std::abs(hc.at(i)), -8) + 1e-6)
        << "Matmul bf16 c " << i;
}

TEST(CudaOpsTest, Gates) {
  GDN_REQUIRE_GPU();
  for (const int64_t hv : {int64_t{1}, int64_t{6}})
    for (const int64_t n : {int64_t{1}, int64_t{70}, int64_t{2048}}) {
      const Shape shape{n, hv};
      // a spans both branches of softplus (the switch at 20).
      const Tensor a = Rand(shape, -30, 30), b = Rand(shape, -6, 6);
      const Tensor a_log = Rand({hv}, -2, 2), dt_bias = Rand({hv}, -1, 1);
      const Tensor dgamma = Rand(shape), dbeta = Rand(shape);
      const Tensor gm = Tensor::Empty(shape, DType::kF32), be = Tensor::Empty(shape, DType::kF32);
      const Tensor gmd = Tensor::Empty(shape, DType::kF32, kGpu),
                   bed = Tensor::Empty(shape, DType::kF32, kGpu);
      ops::GatesForward(a, b, a_log, dt_bias, 2.0, gm, be);
      ops::GatesForward(Dev(a), Dev(b), Dev(a_log), Dev(dt_bias), 2.0, gmd, bed);
      Compare("GatesForward", "gamma", gmd, gm, kTol);
      Compare("GatesForward", "beta", bed, be, kTol);
      const Tensor da = Tensor::Empty(shape, DType::kF32), db = Tensor::Empty(shape, DType::kF32);
      const Tensor dad = Tensor::Empty(shape, DType::kF32, kGpu),
                   dbd = Tensor::Empty(shape, DType::kF32, kGpu);
      const Tensor dal = Rand({hv}), ddt = Rand({hv}), dald = Dev(dal), ddtd = Dev(ddt);
      ops::GatesBackward(a, b, a_log, dt_bias, 2.0, dgamma, dbeta, da, db, dal, ddt);
      ops::GatesBackward(Dev(a), Dev(b), Dev(a_log), Dev(dt_bias), 2.0, Dev(dgamma), Dev(dbeta),
                         dad, dbd, dald, ddtd);
      Compare("GatesBackward", "da", dad, da, kTol);
      Compare("GatesBackward", "db", dbd, db, kTol);
      // Each is one column sum over n rows, in another order than the CPU's; with one head the
      // whole output is a single such sum, which can cancel (1.24e-5 was seen at n = 2048).
      const double sum_tol = hv == 1 ? 1e-4 : kTol;
      Compare("GatesBackward", "da_log", dald, dal, sum_tol);
      Compare("GatesBackward", "ddt_bias", ddtd, ddt, sum_tol);
    }
}

// ---------------------------------------------------------------------------------------------
// The gated delta rule (sequential CUDA kernel) against the CPU's sequential reference.

enum class GateKind { kRandom, kOne, kStrongDecay };

void CheckGdr(int64_t B, int64_t T, int64_t H, int64_t HV, int64_t dk, int64_t dv, GateKind gk) {
  SCOPED_TRACE(testing::Message() << "B=" << B << " T=" << T << " H=" << H << " HV=" << HV
                                  << " dk=" << dk << " dv=" << dv << " gates " << int(gk));
  // q and k L2-normalised per head, as the model feeds them.
  const Tensor qr = Rand({B * T, H * dk}), kr = Rand({B * T, H * dk});
  const Tensor q = Tensor::Empty({B, T, H, dk}, DType::kF32),
               k = Tensor::Empty({B, T, H, dk}, DType::kF32);
  const Tensor rn = Tensor::Empty({B * T * H}, DType::kF32);
  ops::L2NormHeadsForward(qr, dk, 1e-6, q.View({B * T, H * dk}), rn);
  ops::L2NormHeadsForward(kr, dk, 1e-6, k.View({B * T, H * dk}), rn);
  const Tensor v = Rand({B, T, HV, dv});
  Tensor gamma = Rand({B, T, HV}, -3, 0);
  if (gk == GateKind::kOne) ops::Fill(gamma, 0.0);
  if (gk == GateKind::kStrongDecay) ops::Fill(gamma, -30.0);
  const Tensor beta = Rand({B, T, HV}, 0.05, 1);
  const double scale = 1 / std::sqrt(static_cast<double>(dk));
  const Tensor dq_ = Dev(q), dk_ = Dev(k), dv_ = Dev(v), dg_ = Dev(gamma), db_ = Dev(beta);

  const Tensor o = Tensor::Empty(v.shape(), DType::kF32),
               s = Tensor::Empty({B, HV, dk, dv}, DType::kF32);
  ops::GatedDeltaRuleForward(q, k, v, gamma, beta, scale, 0, o, s);
  const Tensor d_o = Rand(v.shape());
  // At T = 1 every output is one product of dot products (q . k, dO . v), which a random draw can
  // cancel to any degree, so there each error is measured against the same op on the inputs'
  // absolute values: the size of the terms that cancelled (Compare's scale). Elsewhere 0.
  std::map<std::string, double> term_scale;
  if (T == 1) {
    const Tensor aq = AbsOf(q), ak = AbsOf(k), av = AbsOf(v), ado = AbsOf(d_o);
    const Tensor ao = Tensor::Empty(v.shape(), DType::kF32), as = Tensor::Empty(s.shape(), DType::kF32);
    ops::GatedDeltaRuleForward(aq, ak, av, gamma, beta, scale, 0, ao, as);
    const Tensor g[5] = {Tensor::Empty(q.shape(), DType::kF32), Tensor::Empty(k.shape(), DType::kF32),
                         Tensor::Empty(v.shape(), DType::kF32),
                         Tensor::Empty(gamma.shape(), DType::kF32),
                         Tensor::Empty(beta.shape(), DType::kF32)};
    ops::GatedDeltaRuleBackward(aq, ak, av, gamma, beta, scale, 0, ado, g[0], g[1], g[2], g[3], g[4]);
    term_scale = {{"o", MaxAbs(ao)}, {"dq", MaxAbs(g[0])}, {"dk", MaxAbs(g[1])},
             {"dv", MaxAbs(g[2])}, {"dbeta", MaxAbs(g[4])}};
  }
  for (const int64_t chunk : {int64_t{0}, int64_t{64}}) {
    const Tensor od = Tensor::Empty(v.shape(), DType::kF32, kGpu),
                 sd = Tensor::Empty({B, HV, dk, dv}, DType::kF32, kGpu);
    ops::GatedDeltaRuleForward(dq_, dk_, dv_, dg_, db_, scale, chunk, od, sd);
    Compare("GatedDeltaRuleForward", "o", od, o, kTol, term_scale["o"]);
    Compare("GatedDeltaRuleForward", "final_state", sd, s, kTol);
  }
  // Without a final state.
  const Tensor od2 = Tensor::Empty(v.shape(), DType::kF32, kGpu);
  ops::GatedDeltaRuleForward(dq_, dk_, dv_, dg_, db_, scale, 0, od2, Tensor());
  Compare("GatedDeltaRuleForward", "o_no_state", od2, o, kTol, term_scale["o"]);

  auto empty = [](const Tensor& like, Device dev) {
    // Garbage-filled: the op must overwrite every element.
    Tensor t = Tensor::Empty(like.shape(), DType::kF32, dev);
    ops::Fill(t, 1e3);
    return t;
  };
  const Tensor gq = empty(q, kCpu), gk_ = empty(k, kCpu), gv = empty(v, kCpu),
               gg = empty(gamma, kCpu), gb = empty(beta, kCpu);
  ops::GatedDeltaRuleBackward(q, k, v, gamma, beta, scale, 0, d_o, gq, gk_, gv, gg, gb);
  // chunk 0: the sequential kernel; 64: the chunked one where its sizes allow (gdr_op.cu).
  for (const int64_t chunk : {int64_t{0}, int64_t{64}}) {
    SCOPED_TRACE(testing::Message() << "chunk " << chunk);
    const Tensor hq = empty(q, kGpu), hk = empty(k, kGpu), hv_ = empty(v, kGpu),
                 hg = empty(gamma, kGpu), hb = empty(beta, kGpu);
    ops::GatedDeltaRuleBackward(dq_, dk_, dv_, dg_, db_, scale, chunk, Dev(d_o), hq, hk, hv_, hg, hb);
    Compare("GatedDeltaRuleBackward", "dq", hq, gq, kTol, term_scale["dq"]);
    Compare("GatedDeltaRuleBackward", "dk", hk, gk_, kTol, term_scale["dk"]);
    Compare("GatedDeltaRuleBackward", "dv", hv_, gv, kTol, term_scale["dv"]);
    if (T == 1) {
      // dgamma = alpha <dL/dS, S_0> and S_0 = 0: exactly zero at T = 1, on both devices.
      const Tensor hg_cpu = hg.To(kCpu);
      for (int64_t i = 0; i < hg_cpu.numel(); ++i) EXPECT_EQ(hg_cpu.at(i), 0.0) << i;
      for (int64_t i = 0; i < gg.numel(); ++i) EXPECT_EQ(gg.at(i), 0.0) << i;
    } else {
      Compare("GatedDeltaRuleBackward", "dgamma", hg, gg, kTol);
    }
    // With a handful of tokens, dbeta is a few single dot products whose terms can cancel: two
    // float32 summation orders then differ by more than 1e-5 of the result (1.005e-5 was seen at
    // T = 1); a wrong term would still be off by order one.
    Compare("GatedDeltaRuleBackward", "dbeta", hb, gb, gb.numel() < 16 ? 1e-4 : kTol,
            term_scale["dbeta"]);
  }

  // bf16 q, k, v, d_o and outputs (the bf16 mode): against the CPU on the same (rounded) values,
  // within the bf16 band for the bf16 outputs (one rounding is 2^-9); the float32 outputs (the
  // state, dgamma, dbeta) are computed from exact inputs, so within 1e-4.
  const Tensor q16 = RoundedToBf16(q), k16 = RoundedToBf16(k), v16 = RoundedToBf16(v),
               do16 = RoundedToBf16(d_o);
  const Tensor o_r = Tensor::Empty(v.shape(), DType::kF32),
               s_r = Tensor::Empty(s.shape(), DType::kF32);
  ops::GatedDeltaRuleForward(q16, k16, v16, gamma, beta, scale, 0, o_r, s_r);
  const Tensor rq = empty(q, kCpu), rk = empty(k, kCpu), rv = empty(v, kCpu),
               rg = empty(gamma, kCpu), rb = empty(beta, kCpu);
  ops::GatedDeltaRuleBackward(q16, k16, v16, gamma, beta, scale, 0, do16, rq, rk, rv, rg, rb);
  const Tensor bq = Bf16Dev(q16), bk = Bf16Dev(k16), bv = Bf16Dev(v16), bdo = Bf16Dev(do16);
  constexpr double kBf16Tol = 1e-2;
  for (const int64_t chunk : {int64_t{0}, int64_t{64}}) {
    SCOPED_TRACE(testing::Message() << "bf16, chunk " << chunk);
    auto b16 = [](const Tensor& like) { return Tensor::Empty(like.shape(), DType::kBF16, kGpu); };
    const Tensor od = b16(v), sd = Tensor::Empty(s.shape(), DType::kF32, kGpu);
    ops::GatedDeltaRuleForward(bq, bk, bv, dg_, db_, scale, chunk, od, sd);
    Compare("GatedDeltaRuleForward_bf16", "o", od, o_r, kBf16Tol, term_scale["o"]);
    Compare("GatedDeltaRuleForward_bf16", "final_state", sd, s_r, 1e-4);
    const Tensor hq = b16(q), hk = b16(k), hv_ = b16(v), hg = empty(gamma, kGpu),
                 hb = empty(beta, kGpu);
    ops::GatedDeltaRuleBackward(bq, bk, bv, dg_, db_, scale, chunk, bdo, hq, hk, hv_, hg, hb);
    Compare("GatedDeltaRuleBackward_bf16", "dq", hq, rq, kBf16Tol, term_scale["dq"]);
    Compare("GatedDeltaRuleBackward_bf16", "dk", hk, rk, kBf16Tol, term_scale["dk"]);
    Compare("GatedDeltaRuleBackward_bf16", "dv", hv_, rv, kBf16Tol, term_scale["dv"]);
    if (T > 1) Compare("GatedDeltaRuleBackward_bf16", "dgamma", hg, rg, 1e-4);
    Compare("GatedDeltaRuleBackward_bf16", "dbeta", hb, rb, 1e-4, term_scale["dbeta"]);
  }
}

TEST(CudaOpsTest, GatedDeltaRuleSmall) {
  GDN_REQUIRE_GPU();
  CheckGdr(1, 1, 1, 1, 64, 64, GateKind::kRandom);
  CheckGdr(2, 70, 2, 4, 64, 128, GateKind::kRandom);  // grouped values, T not a multiple of 64
  CheckGdr(2, 33, 2, 2, 128, 64, GateKind::kRandom);
  CheckGdr(1, 20, 1, 3, 16, 24, GateKind::kRandom);  // sizes that are not multiples of 32
}

TEST(CudaOpsTest, GatedDeltaRuleLongAndGateExtremes) {
  GDN_REQUIRE_GPU();
  CheckGdr(1, 130, 1, 2, 128, 128, GateKind::kRandom);  // three backward blocks
  CheckGdr(1, 100, 2, 2, 128, 128, GateKind::kOne);     // gamma = 0: no decay
  CheckGdr(2, 67, 1, 2, 64, 128, GateKind::kStrongDecay);  // gamma = -30: alpha ~ 1e-13
}

// The saved forward (op_set.inc): the chunked kernel's backward reads the forward's intermediates
// from `saved` instead of recomputing them, with bitwise the same results in float32 and bf16; it
// does read them (a zeroed buffer changes the gradients); the sizes without a saved forward are 0;
// a buffer of the wrong size is refused.
TEST(CudaOpsTest, GatedDeltaRuleSavedForward) {
  GDN_REQUIRE_GPU();
  const int64_t B = 2, T = 130, H = 2, HV = 4, dk = 64, dv = 128;
  const Tensor q = Tensor::Empty({B, T, H, dk}, DType::kF32, kGpu),
               k = Tensor::Empty(q.shape(), DType::kF32, kGpu);
  ops::L2NormHeadsForward(Dev(Rand({B * T, H * dk})), dk, 1e-6, q.View({B * T, H * dk}),
                          Tensor::Empty({B * T * H}, DType::kF32, kGpu));
  ops::L2NormHeadsForward(Dev(Rand({B * T, H * dk})), dk, 1e-6, k.View({B * T, H * dk}),
                          Tensor::Empty({B * T * H}, DType::kF32, kGpu));
  const Tensor v = Dev(Rand({B, T, HV, dv})), d_o = Dev(Rand({B, T, HV, dv}));
  const Tensor gamma = Dev(Rand({B, T, HV}, -3, 0)), beta = Dev(Rand({B, T, HV}, 0.05, 1));
  const double scale = 0.125;

  const int64_t n = ops::GatedDeltaRuleSavedFloats(q, v, 64);
  EXPECT_GT(n, 0);
  EXPECT_EQ(ops::GatedDeltaRuleSavedFloats(q, v, 0), 0);  // the sequential kernel
  EXPECT_EQ(ops::GatedDeltaRuleSavedFloats(q.To(kCpu), v.To(kCpu), 64), 0);
  EXPECT_EQ(ops::GatedDeltaRuleSavedFloats(Tensor::Empty({1, 8, 1, 16}, DType::kF32, kGpu),
                                           Tensor::Empty({1, 8, 1, 24}, DType::kF32, kGpu), 64),
            0);

  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "float32");
    const DType dt = bf16 ? DType::kBF16 : DType::kF32;
    auto as = [&](const Tensor& t) { return bf16 ? Bf16Dev(RoundedToBf16(t.To(kCpu))) : t; };
    const Tensor qi = as(q), ki = as(k), vi = as(v), doi = as(d_o);
    // o, dq, dk, dv, dgamma, dbeta of a forward and a backward with `saved` (or none); with
    // `zero`, saved is cleared between them.
    auto run = [&](const Tensor& saved, bool zero) {
      auto out = [&](const Tensor& like, DType type) {
        return Tensor::Empty(like.shape(), type, kGpu);
      };
      std::vector<Tensor> r = {out(v, dt), out(q, dt), out(k, dt), out(v, dt),
                               out(gamma, DType::kF32), out(beta, DType::kF32)};
      ops::GatedDeltaRuleForward(qi, ki, vi, gamma, beta, scale, 64, r[0], Tensor(), saved);
      if (zero) ops::Fill(saved, 0.0);
      ops::GatedDeltaRuleBackward(qi, ki, vi, gamma, beta, scale, 64, doi, r[1], r[2], r[3], r[4],
                                  r[5], saved);
      return r;
    };
    const std::vector<Tensor> want = run(Tensor(), false);
    const Tensor saved = Tensor::Empty({n}, DType::kF32, kGpu);
    ops::Fill(saved, std::nan(""));
    const std::vector<Tensor> got = run(saved, false);
    const char* names[] = {"o", "dq", "dk", "dv", "dgamma", "dbeta"};
    for (int i = 0; i < 6; ++i) ExpectBitEqual(names[i], got[i], want[i]);
    const Tensor dq_zeroed = run(saved, true)[1].To(kCpu), dq_want = want[1].To(kCpu);
    double diff = 0;
    for (int64_t i = 0; i < dq_want.numel(); ++i)
      diff = std::max(diff, std::abs(dq_zeroed.at(i) - dq_want.at(i)));
    EXPECT_GT(diff, 1e-3 * MaxAbs(dq_want)) << "the backward did not read the saved buffer";
  }
}

TEST(CudaOpsDeathTest, GatedDeltaRuleSavedForwardOfTheWrongSizeOrKernel) {
  GDN_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Tensor q = Tensor::Zeros({1, 70, 1, 64}, DType::kF32, kGpu),
               v = Tensor::Zeros({1, 70, 2, 64}, DType::kF32, kGpu),
               g = Tensor::Zeros({1, 70, 2}, DType::kF32, kGpu),
               o = Tensor::Zeros(v.shape(), DType::kF32, kGpu);
  const int64_t n = ops::GatedDeltaRuleSavedFloats(q, v, 64);
  EXPECT_DEATH(ops::GatedDeltaRuleForward(q, q, v, g, g, 1.0, 64, o, Tensor(),
                                          Tensor::Empty({n - 1}, DType::kF32, kGpu)),
               "saved has the wrong size");
  EXPECT_DEATH(ops::GatedDeltaRuleBackward(q, q, v, g, g, 1.0, 0, v, q, q, o, g, g,
                                           Tensor::Empty({n}, DType::kF32, kGpu)),
               "a saved forward needs the chunked kernel");
}

// ---------------------------------------------------------------------------------------------
// Embedding and losses.

TEST(CudaOpsTest, Embedding) {
  GDN_REQUIRE_GPU();
  for (const int64_t offset : {int64_t{0}, int64_t{20}}) {
    const int64_t V = 50, rows = offset ? 15 : V, d = 24, n = 300;
    const Tensor tok = RandTokens(n, 0, V);  // many repeats
    const Tensor table = Rand({rows, d}), dout = Rand({n, d});
    const Tensor out = Tensor::Empty({n, d}, DType::kF32),
                 outd = Tensor::Empty({n, d}, DType::kF32, kGpu);
    ops::EmbeddingForward(tok, table, 1.5, out, offset);
    ops::EmbeddingForward(Dev(tok), Dev(table), 1.5, outd, offset);
    Compare("EmbeddingForward", "out", outd, out, kTol);
    const Tensor dt = Rand({rows, d}), dtd = Dev(dt);
    ops::EmbeddingBackward(tok, dout, 1.5, dt, offset);
    ops::EmbeddingBackward(Dev(tok), Dev(dout), 1.5, dtd, offset);
    Compare("EmbeddingBackward", "dtable", dtd, dt, kTol);
  }
}

TEST(CudaOpsTest, CrossEntropy) {
  GDN_REQUIRE_GPU();
  for (const int64_t n : {int64_t{1}, int64_t{37}})
    // Rows held in registers (up to 32768 logits: 10, 1000, 32000) and longer ones (50257).
    for (const int64_t V : {int64_t{10}, int64_t{1000}, int64_t{32000}, int64_t{50257}}) {
      const Tensor logits = Rand({n, V}, -8, 8), tgt = RandTokens(n, 0, V);
      const Tensor dl = Tensor::Empty({n, V}, DType::kF32),
                   dld = Tensor::Empty({n, V}, DType::kF32, kGpu);
      const Tensor ld = Dev(logits);
      CompareScalar("CrossEntropy", ops::CrossEntropy(ld, Dev(tgt), dld, 0.5),
                    ops::CrossEntropy(logits, tgt, dl, 0.5), kTol);
      // dlogits = 0.5 (softmax - onehot), so 0.5 is its scale: when the target's probability is
      // near 1, its p - 1 (the largest value of a short row) cancels to about 1e-3 and one float32
      // rounding of p is 6e-5 of that (seen for one row of 10).
      Compare("CrossEntropy", "dlogits", dld, dl, kTol, 0.5);
      CompareScalar("CrossEntropy_noGrad", ops::CrossEntropy(ld, Dev(tgt), Tensor()),
                    ops::CrossEntropy(logits, tgt, Tensor()), kTol);
      // dlogits aliasing the logits.
      const Tensor inplace = logits.Clone(), inplaced = Dev(logits);
      ops::CrossEntropy(inplace, tgt, inplace, 0.5);
      ops::CrossEntropy(inplaced, Dev(tgt), inplaced, 0.5);
      Compare("CrossEntropy", "dlogits_aliased", inplaced, inplace, kTol, 0.5);
    }
  // Rows rising from -50 to 80 (each thread's running max grows at every value it reads, and
  // exp(80) overflows without the max subtracted) and falling back.
  const int64_t n = 4, V = 5000;
  const Tensor logits = Tensor::Empty({n, V}, DType::kF32), tgt = RandTokens(n, 0, V);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < V; ++j) {
      const double ramp = -50.0 + 130.0 * j / (V - 1);
      logits.set(i * V + j, i % 2 ? ramp : 30.0 - ramp);
    }
  const Tensor dl = Tensor::Empty({n, V}, DType::kF32), dld = Tensor::Empty({n, V}, DType::kF32, kGpu);
  CompareScalar("CrossEntropy_ramp", ops::CrossEntropy(Dev(logits), Dev(tgt), dld, 1.0),
                ops::CrossEntropy(logits, tgt, dl, 1.0), kTol);
  Compare("CrossEntropy", "dlogits_ramp", dld, dl, kTol);
}

TEST(CudaOpsTest, VocabParallelCrossEntropy) {
  GDN_REQUIRE_GPU();
  const int64_t n = 37, V = 1000, Vl = 300, offset = 100;
  const Tensor logits = Rand({n, Vl}, -8, 8), tgt = RandTokens(n, 0, V);  // some outside
  const Tensor ld = Dev(logits), td = Dev(tgt);
  const Tensor mx = Tensor::Empty({n}, DType::kF32), mxd = Tensor::Empty({n}, DType::kF32, kGpu);
  ops::RowMax(logits, mx);
  ops::RowMax(ld, mxd);
  Compare("RowMax", "row_max", mxd, mx, 0);
  const Tensor se = Tensor::Empty({n}, DType::kF32), tl = Tensor::Empty({n}, DType::kF32);
  const Tensor sed = Tensor::Empty({n}, DType::kF32, kGpu),
               tld = Tensor::Empty({n}, DType::kF32, kGpu);
  ops::SoftmaxRowStats(logits, tgt, offset, mx, se, tl);
  ops::SoftmaxRowStats(ld, td, offset, mxd, sed, tld);
  Compare("SoftmaxRowStats", "sum_exp", sed, se, kTol);
  Compare("SoftmaxRowStats", "target_logit", tld, tl, 0);
  const Tensor dl = Tensor::Empty({n, Vl}, DType::kF32),
               dld = Tensor::Empty({n, Vl}, DType::kF32, kGpu);
  CompareScalar("CrossEntropyFromStats",
                ops::CrossEntropyFromStats(ld, td, offset, mxd, sed, tld, dld, 0.5),
                ops::CrossEntropyFromStats(logits, tgt, offset, mx, se, tl, dl, 0.5), kTol);
  Compare("CrossEntropyFromStats", "dlogits", dld, dl, kTol);
}

}  // namespace
}  // namespace gdn
