// Tests of the op set (kernels/ops.h) on the CPU. Every op is compared with a naive reference
// written here in double straight from the math; every backward with central finite differences
// (float64) of the scalar loss L = sum(output * R) for a random R.
//
// Relative error everywhere: max|got - want| / max|want| (want must not be all zero).
// Thresholds: float64 kernel vs float64 reference 1e-12 (1e-9 for the gates: softplus(z) = z
// above z = 20 is off by log1p(exp(-z)) < 2e-9), finite differences 1e-6 (h = 1e-5: truncation
// ~h^2 = 1e-10, rounding ~1e-16/h = 1e-11), chunked vs sequential gated delta rule 1e-10,
// float32 vs float64 1e-5 (1e-4 for the gated delta rule, a 37-step recurrence).
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace gdn {
namespace {

constexpr DType kF32 = DType::kF32, kF64 = DType::kF64;
constexpr double kExactTol = 1e-12, kFdTol = 1e-6, kGdrTol = 1e-10, kF32Tol = 1e-5;
using Vec = std::vector<double>;

// Uniform random values in [lo, hi) from a fixed seed, in the given dtype.
Tensor Rand(const Shape& shape, uint64_t seed, double lo = -1, double hi = 1, DType dt = kF64) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  Tensor t = Tensor::Empty(shape, dt);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, u(rng));
  return t;
}
Tensor Filled(const Shape& shape, double value, DType dt = kF64) {
  Tensor t = Tensor::Empty(shape, dt);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, value);
  return t;
}
Tensor Tokens(const std::vector<int32_t>& ids) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(ids.size())}, DType::kI32);
  for (size_t i = 0; i < ids.size(); ++i) t.data<int32_t>()[i] = ids[i];
  return t;
}
Vec Vals(const Tensor& t) {
  Vec v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.at(i);
  return v;
}
double MaxAbs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}
double RelErr(const Vec& got, const Vec& want) {
  EXPECT_EQ(got.size(), want.size());
  EXPECT_GT(MaxAbs(want), 0) << "vacuous comparison: the reference is all zero";
  double num = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = std::abs(got[i] - want[i]);
    num = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(num, d);
  }
  return num / std::max(MaxAbs(want), 1e-300);
}
double RelErr(const Tensor& got, const Vec& want) { return RelErr(Vals(got), want); }
double RelErr(const Tensor& got, const Tensor& want) { return RelErr(Vals(got), Vals(want)); }
double Dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.at(i) * b.at(i);
  return s;
}
double Sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
double Silu(double x) { return x / (1 + std::exp(-x)); }
double Softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

// Central-difference gradient of loss() with respect to every element of x (float64; x is
// perturbed in place and restored).
Vec NumGrad(Tensor x, const std::function<double()>& loss, double h = 1e-5) {
  Vec g(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double x0 = x.at(i);
    x.set(i, x0 + h);
    const double lp = loss();
    x.set(i, x0 - h);
    const double lm = loss();
    x.set(i, x0);
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// Parameter gradients accumulate: run(dw) twice from zero gives 2 * once, and from a nonzero
// start d0 gives d0 + once.
void ExpectAccumulates(const char* what, const Shape& shape,
                       const std::function<void(const Tensor&)>& run) {
  Tensor once = Tensor::Zeros(shape, kF64);
  run(once);
  Tensor twice = Tensor::Zeros(shape, kF64);
  run(twice);
  run(twice);
  Vec want = Vals(once);
  for (double& x : want) x *= 2;
  EXPECT_LT(RelErr(twice, want), kExactTol) << what << ": second call does not add";
  Tensor d = Rand(shape, 4242, -3, 3);
  want = Vals(d);
  for (int64_t i = 0; i < once.numel(); ++i) want[i] += once.at(i);
  run(d);
  EXPECT_LT(RelErr(d, want), kExactTol) << what << ": does not add to a nonzero gradient";
}

// Runs f on float32 inputs and on the same values in float64; compares every output.
// f builds its inputs with In(), which rounds to float so both runs see identical values.
Tensor In(const Shape& shape, uint64_t seed, DType dt, double lo = -1, double hi = 1) {
  return Rand(shape, seed, lo, hi, kF32).To(dt);
}
void ExpectF32MatchesF64(const char* what, const std::function<std::vector<Tensor>(DType)>& f,
                         double tol = kF32Tol) {
  const std::vector<Tensor> a = f(kF32), b = f(kF64);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].dtype(), kF32) << what;
    EXPECT_LT(RelErr(a[i], b[i]), tol) << what << " output " << i;
  }
}

// ------------------------------------------------------------------------------------ Matmul

void CheckMatmul(DType dt, double tol, int64_t m, int64_t k, int64_t n, uint64_t seed) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = Rand(ta ? Shape{k, m} : Shape{m, k}, seed++, -1, 1, dt);
      Tensor b = Rand(tb ? Shape{n, k} : Shape{k, n}, seed++, -1, 1, dt);
      Tensor c = Rand({m, n}, seed++, -1, 1, dt);
      const Vec c0 = Vals(c);
      auto A = [&](int64_t i, int64_t p) { return ta ? a.at(p * m + i) : a.at(i * k + p); };
      auto B = [&](int64_t p, int64_t j) { return tb ? b.at(j * k + p) : b.at(p * n + j); };
      Vec prod(m * n, 0.0);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t p = 0; p < k; ++p) prod[i * n + j] += A(i, p) * B(p, j);
      const double alpha = 0.75, beta = -1.5;
      Vec want(m * n);
      for (int64_t i = 0; i < m * n; ++i) want[i] = alpha * prod[i] + beta * c0[i];
      ops::Matmul(a, ta, b, tb, c, alpha, beta);
      EXPECT_LT(RelErr(c, want), tol) << "trans_a " << ta << " trans_b " << tb << " m" << m;
      // Defaults alpha = 1, beta = 0; with beta = 0 the old contents of c (even NaN) are ignored,
      // as in BLAS, so outputs may be Tensor::Empty.
      Tensor c2 = Filled({m, n}, std::nan(""), dt);
      ops::Matmul(a, ta, b, tb, c2);
      EXPECT_LT(RelErr(c2, prod), tol) << "defaults, trans_a " << ta << " trans_b " << tb;
    }
}

TEST(OpsTest, MatmulAllTransposesFloat64) {
  CheckMatmul(kF64, kExactTol, 5, 7, 3, 10);
  CheckMatmul(kF64, kExactTol, 67, 65, 70, 20);  // past the blocking of the BLAS
  CheckMatmul(kF64, kExactTol, 1, 9, 1, 30);
}

TEST(OpsTest, MatmulAllTransposesFloat32) {
  CheckMatmul(kF32, kF32Tol, 5, 7, 3, 40);
  CheckMatmul(kF32, kF32Tol, 67, 65, 70, 50);
}

// ---------------------------------------------------------------- elementwise and reductions

TEST(OpsTest, FillAddAxpyScale) {
  for (DType dt : {kF32, kF64}) {
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    const Shape s = {1037};  // odd, longer than any vector width, split over threads
    Tensor x = Rand(s, 1, -1, 1, dt), y = Rand(s, 2, -1, 1, dt);
    const Vec xv = Vals(x), yv = Vals(y);
    Tensor out = Filled(s, 9, dt);
    ops::Add(x, y, out);
    Vec want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = xv[i] + yv[i];
    EXPECT_LT(RelErr(out, want), tol) << "Add";
    ops::Axpy(-0.3, x, y);
    for (size_t i = 0; i < xv.size(); ++i) want[i] = yv[i] - 0.3 * xv[i];
    EXPECT_LT(RelErr(y, want), tol) << "Axpy";
    EXPECT_LT(RelErr(x, xv), tol) << "Axpy changed x";
    ops::Scale(x, 2.5);
    for (size_t i = 0; i < xv.size(); ++i) want[i] = 2.5 * xv[i];
    EXPECT_LT(RelErr(x, want), tol) << "Scale";
    ops::Fill(x, -1.25);
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x.at(i), -1.25) << i;
    // In place: out aliases an input.
    Tensor z = Rand(s, 3, -1, 1, dt);
    const Vec zv = Vals(z);
    ops::Add(z, z, z);
    for (size_t i = 0; i < zv.size(); ++i) want[i] = 2 * zv[i];
    EXPECT_LT(RelErr(z, want), tol) << "Add in place";
  }
}

TEST(OpsTest, SumSquaresMeanAbs) {
  for (DType dt : {kF32, kF64}) {
    Tensor x = Rand({33, 31}, 5, -2, 2, dt);
    double ss = 0, sa = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      ss += x.at(i) * x.at(i);
      sa += std::abs(x.at(i));
    }
    // Both accumulate in double, so even float32 inputs give double-accurate sums.
    EXPECT_NEAR(ops::SumSquares(x), ss, 1e-10 * ss) << DTypeName(dt);
    EXPECT_NEAR(ops::MeanAbs(x), sa / x.numel(), 1e-12) << DTypeName(dt);
  }
  EXPECT_EQ(ops::MeanAbs(Tensor::Zeros({0}, kF64)), 0.0);
  EXPECT_EQ(ops::SumSquares(Tensor::Zeros({0}, kF32)), 0.0);
}

TEST(OpsTest, AllFinite) {
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : {kF32, kF64}) {
    Tensor x = Rand({1001}, 6, -1e3, 1e3, dt);
    EXPECT_TRUE(ops::AllFinite(x));
    for (int64_t pos : {0, 500, 1000})
      for (double bad : {std::nan(""), inf, -inf}) {
        const double keep = x.at(pos);
        x.set(pos, bad);
        EXPECT_FALSE(ops::AllFinite(x)) << DTypeName(dt) << " " << bad << " at " << pos;
        x.set(pos, keep);
      }
    EXPECT_TRUE(ops::AllFinite(x));
    x.set(3, dt == kF32 ? 3e38 : 1e308);  // huge but finite
    EXPECT_TRUE(ops::AllFinite(x));
  }
}

// ------------------------------------------------------------------------------------ SwiGLU

TEST(OpsTest, SwigluForward) {
  for (DType dt : {kF32, kF64}) {
    Tensor g = Rand({9, 13}, 7, -6, 6, dt), u = Rand({9, 13}, 8, -2, 2, dt);
    Tensor h = Filled({9, 13}, 5, dt);
    ops::SwigluForward(g, u, h);
    Vec want(g.numel());
    for (int64_t i = 0; i < g.numel(); ++i) want[i] = Silu(g.at(i)) * u.at(i);
    EXPECT_LT(RelErr(h, want), dt == kF64 ? kExactTol : kF32Tol);
  }
}

TEST(OpsTest, SwigluBackwardMatchesFiniteDifferences) {
  Tensor g = Rand({5, 7}, 9, -5, 5), u = Rand({5, 7}, 10), R = Rand({5, 7}, 11);
  Tensor h = Tensor::Empty({5, 7}, kF64);
  auto loss = [&] {
    ops::SwigluForward(g, u, h);
    return Dot(h, R);
  };
  const Vec ng = NumGrad(g, loss), nu = NumGrad(u, loss);
  Tensor dg = Filled({5, 7}, 7), du = Filled({5, 7}, 7);  // activation grads are overwritten
  ops::SwigluBackward(g, u, R, dg, du);
  EXPECT_LT(RelErr(dg, ng), kFdTol) << "dgate";
  EXPECT_LT(RelErr(du, nu), kFdTol) << "dup";
  // The backward's h is the forward's, bit for bit.
  loss();
  Tensor h2 = Filled({5, 7}, 7);
  ops::SwigluBackward(g, u, R, dg, du, h2);
  for (int64_t i = 0; i < h.numel(); ++i) EXPECT_EQ(h2.at(i), h.at(i)) << i;
}

// ------------------------------------------------------------------------------ norms

TEST(OpsTest, RmsNormForward) {
  const int64_t n = 6, d = 10;
  const double eps = 1e-5;
  for (DType dt : {kF32, kF64}) {
    Tensor x = Rand({n, d}, 12, -2, 2, dt), w = Rand({d}, 13, 0.5, 1.5, dt);
    Tensor y = Tensor::Empty({n, d}, dt), rstd = Tensor::Empty({n}, dt);
    ops::RmsNormForward(x, w, eps, y, rstd);
    Vec wy(n * d), wr(n);
    for (int64_t r = 0; r < n; ++r) {
      double ms = 0;
      for (int64_t i = 0; i < d; ++i) ms += x.at(r * d + i) * x.at(r * d + i) / d;
      wr[r] = 1 / std::sqrt(ms + eps);
      for (int64_t i = 0; i < d; ++i) wy[r * d + i] = x.at(r * d + i) * wr[r] * w.at(i);
    }
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    EXPECT_LT(RelErr(y, wy), tol);
    EXPECT_LT(RelErr(rstd, wr), tol);
  }
}

TEST(OpsTest, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t n = 6, d = 8;
  const double eps = 1e-5;
  Tensor x = Rand({n, d}, 14, -2, 2), w = Rand({d}, 15, -1.5, 1.5), R = Rand({n, d}, 16);
  Tensor y = Tensor::Empty({n, d}, kF64), rstd = Tensor::Empty({n}, kF64);
  auto loss = [&] {
    ops::RmsNormForward(x, w, eps, y, rstd);
    return Dot(y, R);
  };
  const Vec nx = NumGrad(x, loss), nw = NumGrad(w, loss);
  loss();
  Tensor dx = Filled({n, d}, 7), dw = Tensor::Zeros({d}, kF64);
  ops::RmsNormBackward(x, w, rstd, R, dx, dw);
  EXPECT_LT(RelErr(dx, nx), kFdTol) << "dx";
  EXPECT_LT(RelErr(dw, nw), kFdTol) << "dw";
  ExpectAccumulates("RmsNorm dw", {d},
                    [&](const Tensor& g) { ops::RmsNormBackward(x, w, rstd, R, dx, g); });
}

// The fused forms the model runs: the residual add with the norm after it, and the backward that
// adds into the residual stream's gradient and writes its copy.
TEST(OpsTest, AddRmsNormForwardIsAddThenRmsNorm) {
  const int64_t n = 5, d = 12;
  const Tensor x = Rand({n, d}, 40, -2, 2, kF32), res = Rand({n, d}, 41, -2, 2, kF32);
  const Tensor w = Rand({d}, 42, 0.5, 1.5, kF32);
  Tensor h = Tensor::Empty({n, d}, kF32), y = Tensor::Empty({n, d}, kF32);
  Tensor r = Tensor::Empty({n}, kF32);
  ops::AddRmsNormForward(x, res, w, 1e-5, h, y, r);
  for (int64_t i = 0; i < n * d; ++i)  // the float32 sum
    EXPECT_EQ(h.data<float>()[i], x.data<float>()[i] + res.data<float>()[i]) << i;
  Tensor y2 = Tensor::Empty({n, d}, kF32), r2 = Tensor::Empty({n}, kF32);
  ops::RmsNormForward(h, w, 1e-5, y2, r2);
  for (int64_t i = 0; i < n * d; ++i) EXPECT_EQ(y.at(i), y2.at(i)) << i;
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(r.at(i), r2.at(i)) << i;
}

TEST(OpsTest, RmsNormBackwardAccumulatesAndCopies) {
  const int64_t n = 6, d = 8;
  const Tensor x = Rand({n, d}, 43, -2, 2), w = Rand({d}, 44, -1.5, 1.5), dy = Rand({n, d}, 45);
  Tensor y = Tensor::Empty({n, d}, kF64), rstd = Tensor::Empty({n}, kF64);
  ops::RmsNormForward(x, w, 1e-5, y, rstd);
  Tensor dx = Tensor::Empty({n, d}, kF64), dw = Tensor::Zeros({d}, kF64);
  ops::RmsNormBackward(x, w, rstd, dy, dx, dw);
  const Tensor before = Rand({n, d}, 46);
  Tensor acc = before.Clone(), copy = Filled({n, d}, 7), dw2 = Tensor::Zeros({d}, kF64);
  ops::RmsNormBackward(x, w, rstd, dy, acc, dw2, true, copy);
  Vec want(n * d);
  for (int64_t i = 0; i < n * d; ++i) want[i] = before.at(i) + dx.at(i);
  EXPECT_LT(RelErr(acc, want), kExactTol);
  for (int64_t i = 0; i < n * d; ++i) EXPECT_EQ(copy.at(i), acc.at(i)) << i;
  for (int64_t i = 0; i < d; ++i) EXPECT_EQ(dw2.at(i), dw.at(i)) << i;
}

TEST(OpsTest, L2NormHeadsForward) {
  const int64_t n = 5, heads = 3, hd = 4;
  const double eps = 1e-6;
  for (DType dt : {kF32, kF64}) {
    Tensor x = Rand({n, heads * hd}, 17, -2, 2, dt);
    Tensor y = Tensor::Empty({n, heads * hd}, dt), rn = Tensor::Empty({n * heads}, dt);
    ops::L2NormHeadsForward(x, hd, eps, y, rn);
    Vec wy(x.numel()), wr(n * heads);
    for (int64_t r = 0; r < n * heads; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < hd; ++i) ss += x.at(r * hd + i) * x.at(r * hd + i);
      wr[r] = 1 / std::sqrt(ss + eps);
      for (int64_t i = 0; i < hd; ++i) wy[r * hd + i] = x.at(r * hd + i) * wr[r];
    }
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    EXPECT_LT(RelErr(y, wy), tol);
    EXPECT_LT(RelErr(rn, wr), tol);
  }
}

TEST(OpsTest, L2NormHeadsBackwardMatchesFiniteDifferences) {
  const int64_t n = 4, heads = 3, hd = 5;
  const double eps = 1e-6;
  Tensor x = Rand({n, heads * hd}, 18, -2, 2), R = Rand({n, heads * hd}, 19);
  Tensor y = Tensor::Empty(x.shape(), kF64), rn = Tensor::Empty({n * heads}, kF64);
  auto loss = [&] {
    ops::L2NormHeadsForward(x, hd, eps, y, rn);
    return Dot(y, R);
  };
  const Vec nx = NumGrad(x, loss);
  loss();
  Tensor dx = Filled(x.shape(), 7);
  ops::L2NormHeadsBackward(y, rn, R, dx);
  EXPECT_LT(RelErr(dx, nx), kFdTol);
}

TEST(OpsTest, GatedRmsNormForward) {
  const int64_t n = 4, heads = 3, hd = 5;
  const double eps = 1e-5;
  for (DType dt : {kF32, kF64}) {
    Tensor o = Rand({n, heads * hd}, 20, -2, 2, dt), g = Rand({n, heads * hd}, 21, -4, 4, dt);
    Tensor w = Rand({hd}, 22, 0.5, 1.5, dt);
    Tensor y = Tensor::Empty(o.shape(), dt), rstd = Tensor::Empty({n * heads}, dt);
    ops::GatedRmsNormForward(o, g, w, hd, eps, y, rstd);
    Vec wy(o.numel()), wr(n * heads);
    for (int64_t r = 0; r < n * heads; ++r) {
      double ms = 0;
      for (int64_t i = 0; i < hd; ++i) ms += o.at(r * hd + i) * o.at(r * hd + i) / hd;
      wr[r] = 1 / std::sqrt(ms + eps);
      for (int64_t i = 0; i < hd; ++i)
        wy[r * hd + i] = o.at(r * hd + i) * wr[r] * w.at(i) * Silu(g.at(r * hd + i));
    }
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    EXPECT_LT(RelErr(y, wy), tol);
    EXPECT_LT(RelErr(rstd, wr), tol);
  }
}

TEST(OpsTest, GatedRmsNormBackwardMatchesFiniteDifferences) {
  const int64_t n = 4, heads = 2, hd = 6;
  const double eps = 1e-5;
  Tensor o = Rand({n, heads * hd}, 23, -2, 2), g = Rand({n, heads * hd}, 24, -4, 4);
  Tensor w = Rand({hd}, 25, -1.5, 1.5), R = Rand(o.shape(), 26);
  Tensor y = Tensor::Empty(o.shape(), kF64), rstd = Tensor::Empty({n * heads}, kF64);
  auto loss = [&] {
    ops::GatedRmsNormForward(o, g, w, hd, eps, y, rstd);
    return Dot(y, R);
  };
  const Vec no = NumGrad(o, loss), ng = NumGrad(g, loss), nw = NumGrad(w, loss);
  loss();
  Tensor d_o = Filled(o.shape(), 7), dg = Filled(o.shape(), 7), dw = Tensor::Zeros({hd}, kF64);
  ops::GatedRmsNormBackward(o, g, w, rstd, hd, R, d_o, dg, dw);
  EXPECT_LT(RelErr(d_o, no), kFdTol) << "do";
  EXPECT_LT(RelErr(dg, ng), kFdTol) << "dg";
  EXPECT_LT(RelErr(dw, nw), kFdTol) << "dw";
  ExpectAccumulates("GatedRmsNorm dw", {hd}, [&](const Tensor& dwt) {
    ops::GatedRmsNormBackward(o, g, w, rstd, hd, R, d_o, dg, dwt);
  });
  // The backward's y is the forward's, bit for bit.
  Tensor y2 = Filled(o.shape(), 7), dw2 = Tensor::Zeros({hd}, kF64);
  ops::GatedRmsNormBackward(o, g, w, rstd, hd, R, d_o, dg, dw2, y2);
  for (int64_t i = 0; i < o.numel(); ++i) EXPECT_EQ(y2.at(i), y.at(i)) << i;
}

// -------------------------------------------------------------------- causal conv + SiLU

// pre[b,t,c] = sum_j w[c,j] x[b, t-(K-1)+j, c] (zero before t = 0); y = silu(pre).
void NaiveConv(const Tensor& x, const Tensor& w, Vec& pre, Vec& y) {
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  pre.assign(x.numel(), 0.0);
  y.assign(x.numel(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t src = t - (K - 1) + j;
          if (src >= 0) s += w.at(c * K + j) * x.at((b * T + src) * C + c);
        }
        pre[(b * T + t) * C + c] = s;
        y[(b * T + t) * C + c] = Silu(s);
      }
}

TEST(OpsTest, CausalConvSiluForward) {
  const int64_t B = 2, T = 7, C = 5, K = 4;
  for (DType dt : {kF32, kF64}) {
    Tensor x = Rand({B, T, C}, 27, -2, 2, dt), w = Rand({C, K}, 28, -1, 1, dt);
    Tensor y = Tensor::Empty(x.shape(), dt);
    ops::CausalConvSiluForward(x, w, y);
    Vec wp, wy;
    NaiveConv(x, w, wp, wy);
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    EXPECT_LT(RelErr(y, wy), tol);
  }
}

// The conv fused with the per-head L2 norm: each head of silu(conv(x)) divided by
// sqrt(|head|^2 + eps), checked against NaiveConv and the norm written out here.
TEST(OpsTest, CausalConvSiluL2NormForward) {
  const int64_t B = 2, T = 7, C = 12, K = 4;
  for (const int64_t hd : {int64_t{4}, int64_t{12}})
    for (DType dt : {kF32, kF64}) {
      Tensor x = Rand({B, T, C}, 31, -2, 2, dt), w = Rand({C, K}, 32, -1, 1, dt);
      const int64_t rows = B * T * C / hd;
      Tensor y = Tensor::Empty(x.shape(), dt), rn = Tensor::Empty({rows}, dt);
      ops::CausalConvSiluL2NormForward(x, w, hd, 1e-6, y, rn);
      Vec wp, wy, wrn(rows);
      NaiveConv(x, w, wp, wy);
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < hd; ++i) ss += wy[r * hd + i] * wy[r * hd + i];
        wrn[r] = 1 / std::sqrt(ss + 1e-6);
        for (int64_t i = 0; i < hd; ++i) wy[r * hd + i] *= wrn[r];
      }
      const double tol = dt == kF64 ? kExactTol : kF32Tol;
      EXPECT_LT(RelErr(y, wy), tol) << hd;
      EXPECT_LT(RelErr(rn, wrn), tol) << hd;
    }
}

TEST(OpsTest, CausalConvSiluIsCausal) {
  const int64_t B = 2, T = 7, C = 5, K = 4;
  Tensor x = Rand({B, T, C}, 29, -2, 2), w = Rand({C, K}, 30);
  Tensor y = Tensor::Empty(x.shape(), kF64);
  ops::CausalConvSiluForward(x, w, y);
  const Vec y0 = Vals(y);
  for (int64_t t0 = 0; t0 < T; ++t0) {
    Tensor x2 = x.Clone();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) x2.set((b * T + t0) * C + c, x.at((b * T + t0) * C + c) + 1);
    ops::CausalConvSiluForward(x2, w, y);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = (b * T + t) * C + c;
          if (t < t0 || t >= t0 + K) {
            EXPECT_EQ(y.at(i), y0[i]) << "x at t=" << t0 << " changed y at t=" << t;
          } else {
            EXPECT_NE(y.at(i), y0[i]) << "x at t=" << t0 << " did not reach y at t=" << t;
          }
        }
  }
}

TEST(OpsTest, CausalConvSiluBackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 7, C = 3, K = 4;
  Tensor x = Rand({B, T, C}, 31, -2, 2), w = Rand({C, K}, 32), R = Rand(x.shape(), 33);
  Tensor y = Tensor::Empty(x.shape(), kF64);
  auto loss = [&] {
    ops::CausalConvSiluForward(x, w, y);
    return Dot(y, R);
  };
  const Vec nx = NumGrad(x, loss), nw = NumGrad(w, loss);
  loss();
  Tensor dx = Filled(x.shape(), 7), dw = Tensor::Zeros({C, K}, kF64);
  ops::CausalConvSiluBackward(x, w, R, dx, dw);
  EXPECT_LT(RelErr(dx, nx), kFdTol) << "dx";
  EXPECT_LT(RelErr(dw, nw), kFdTol) << "dw";
  ExpectAccumulates("CausalConvSilu dw", {C, K},
                    [&](const Tensor& g) { ops::CausalConvSiluBackward(x, w, R, dx, g); });
}

// The conv fused with the L2 norm: its backward against finite differences of its forward.
TEST(OpsTest, CausalConvSiluL2NormBackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 7, C = 6, K = 4, hd = 3;
  Tensor x = Rand({B, T, C}, 34, -2, 2), w = Rand({C, K}, 35), R = Rand(x.shape(), 36);
  Tensor y = Tensor::Empty(x.shape(), kF64), rn = Tensor::Empty({B * T * C / hd}, kF64);
  auto loss = [&] {
    ops::CausalConvSiluL2NormForward(x, w, hd, 1e-6, y, rn);
    return Dot(y, R);
  };
  const Vec nx = NumGrad(x, loss), nw = NumGrad(w, loss);
  loss();
  Tensor dx = Filled(x.shape(), 7), dw = Tensor::Zeros({C, K}, kF64);
  ops::CausalConvSiluL2NormBackward(x, w, y, rn, R, dx, dw);
  EXPECT_LT(RelErr(dx, nx), kFdTol) << "dx";
  EXPECT_LT(RelErr(dw, nw), kFdTol) << "dw";
  ExpectAccumulates("CausalConvSiluL2Norm dw", {C, K},
                    [&](const Tensor& g) {
                      ops::CausalConvSiluL2NormBackward(x, w, y, rn, R, dx, g);
                    });
}

// ------------------------------------------------------------------------------------ gates

// a with a few entries far from zero: a + dt_bias > 20 (softplus's linear branch) and << 0.
Tensor GateInputA(int64_t n, int64_t hv, uint64_t seed, DType dt = kF64) {
  Tensor a = Rand({n, hv}, seed, -4, 4, dt);
  a.set(0, 25);
  a.set(hv + 1, 40);
  a.set(2 * hv + 2, -30);
  a.set(3, 22.5);
  return a;
}

TEST(OpsTest, GatesForward) {
  const int64_t n = 6, hv = 4;
  for (DType dt : {kF32, kF64})
    for (double bs : {1.0, 2.0}) {
      Tensor a = GateInputA(n, hv, 34, dt), b = Rand({n, hv}, 35, -6, 6, dt);
      Tensor alog = Rand({hv}, 36, -2, 1, dt), dtb = Rand({hv}, 37, -1, 1, dt);
      Tensor gamma = Tensor::Empty({n, hv}, dt), beta = Tensor::Empty({n, hv}, dt);
      ops::GatesForward(a, b, alog, dtb, bs, gamma, beta);
      Vec wg(n * hv), wb(n * hv);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < hv; ++h) {
          const int64_t j = i * hv + h;
          wg[j] = -std::exp(alog.at(h)) * Softplus(a.at(j) + dtb.at(h));
          wb[j] = bs * Sigmoid(b.at(j));
        }
      const double tol = dt == kF64 ? 1e-9 : kF32Tol;
      EXPECT_LT(RelErr(gamma, wg), tol) << DTypeName(dt) << " beta_scale " << bs;
      EXPECT_LT(RelErr(beta, wb), tol) << DTypeName(dt) << " beta_scale " << bs;
      for (int64_t j = 0; j < n * hv; ++j) {
        EXPECT_LE(gamma.at(j), 0) << j;
        EXPECT_TRUE(beta.at(j) > 0 && beta.at(j) < bs) << j;
      }
    }
}

TEST(OpsTest, GatesBackwardMatchesFiniteDifferences) {
  const int64_t n = 5, hv = 4;
  const double bs = 2.0;
  Tensor a = GateInputA(n, hv, 38), b = Rand({n, hv}, 39, -4, 4);
  Tensor alog = Rand({hv}, 40, -2, 1), dtb = Rand({hv}, 41, -1, 1);
  Tensor R1 = Rand({n, hv}, 42), R2 = Rand({n, hv}, 43);
  Tensor gamma = Tensor::Empty({n, hv}, kF64), beta = Tensor::Empty({n, hv}, kF64);
  auto loss = [&] {
    ops::GatesForward(a, b, alog, dtb, bs, gamma, beta);
    return Dot(gamma, R1) + Dot(beta, R2);
  };
  const Vec na = NumGrad(a, loss), nb = NumGrad(b, loss);
  const Vec nal = NumGrad(alog, loss), ndt = NumGrad(dtb, loss);
  Tensor da = Filled({n, hv}, 7), db = Filled({n, hv}, 7);
  Tensor dal = Tensor::Zeros({hv}, kF64), ddt = Tensor::Zeros({hv}, kF64);
  ops::GatesBackward(a, b, alog, dtb, bs, R1, R2, da, db, dal, ddt);
  EXPECT_LT(RelErr(da, na), kFdTol) << "da";
  EXPECT_LT(RelErr(db, nb), kFdTol) << "db";
  EXPECT_LT(RelErr(dal, nal), kFdTol) << "da_log";
  EXPECT_LT(RelErr(ddt, ndt), kFdTol) << "ddt_bias";
  Tensor other = Tensor::Zeros({hv}, kF64);
  ExpectAccumulates("Gates da_log", {hv}, [&](const Tensor& g) {
    other.SetZero();
    ops::GatesBackward(a, b, alog, dtb, bs, R1, R2, da, db, g, other);
  });
  ExpectAccumulates("Gates ddt_bias", {hv}, [&](const Tensor& g) {
    other.SetZero();
    ops::GatesBackward(a, b, alog, dtb, bs, R1, R2, da, db, other, g);
  });
}

// ------------------------------------------------------------------------- column views

// A column view of columns [offset, offset + cols) of a [rows, width] buffer of sevens.
struct ColumnBuffer {
  Tensor buffer, view;
  int64_t offset;
};
ColumnBuffer InColumns(int64_t rows, int64_t cols, int64_t offset, int64_t width, DType dt) {
  Tensor buffer = Filled({rows, width}, 7, dt);
  return {buffer, buffer.Columns(offset, offset + cols), offset};
}
// The view holds want bit for bit, and the buffer's other columns still hold their sevens.
void ExpectWrittenInColumns(const ColumnBuffer& c, const Tensor& want, const char* what) {
  ASSERT_EQ(c.view.numel(), want.numel()) << what;
  const int64_t width = c.buffer.dim(1), cols = c.view.dim(1);
  for (int64_t i = 0; i < c.buffer.numel(); ++i) {
    const int64_t r = i / width, j = i % width - c.offset;
    if (j >= 0 && j < cols) EXPECT_EQ(c.buffer.at(i), want.at(r * cols + j)) << what << " " << i;
    else EXPECT_EQ(c.buffer.at(i), 7.0) << what << ": wrote outside its columns at " << i;
  }
}

TEST(OpsTest, ColumnViewOutputsEqualContiguousOnes) {
  for (DType dt : {kF32, kF64}) {
    {  // the gated norm's dg: rows of two heads
      const int64_t n = 4, heads = 2, hd = 6;
      Tensor o = In({n, heads * hd}, 60, dt), g = In({n, heads * hd}, 61, dt, -3, 3);
      Tensor w = In({hd}, 62, dt), dy = In({n, heads * hd}, 63, dt);
      Tensor y = Tensor::Empty(o.shape(), dt), rstd = Tensor::Empty({n * heads}, dt);
      ops::GatedRmsNormForward(o, g, w, hd, 1e-5, y, rstd);
      Tensor d_o = Tensor::Empty(o.shape(), dt), dg = Tensor::Empty(o.shape(), dt);
      Tensor dw = Tensor::Zeros({hd}, dt);
      ops::GatedRmsNormBackward(o, g, w, rstd, hd, dy, d_o, dg, dw);
      const ColumnBuffer c = InColumns(n, heads * hd, 3, 17, dt);
      ops::GatedRmsNormBackward(o, g, w, rstd, hd, dy, d_o, c.view, dw);
      ExpectWrittenInColumns(c, dg, "GatedRmsNormBackward dg");
    }
    {  // the conv's dx
      const int64_t B = 2, T = 7, C = 3, K = 4;
      Tensor x = In({B, T, C}, 64, dt), w = In({C, K}, 65, dt), dy = In({B, T, C}, 66, dt);
      Tensor dx = Tensor::Empty(x.shape(), dt), dw = Tensor::Zeros({C, K}, dt);
      ops::CausalConvSiluBackward(x, w, dy, dx, dw);
      const ColumnBuffer c = InColumns(B * T, C, 5, 11, dt);
      ops::CausalConvSiluBackward(x, w, dy, c.view.View({B, T, C}), dw);
      ExpectWrittenInColumns(c, dx, "CausalConvSiluBackward dx");
    }
    {  // the gates' da and db, side by side in one buffer
      const int64_t n = 5, hv = 4;
      Tensor a = In({n, hv}, 67, dt, -4, 4), b = In({n, hv}, 68, dt, -4, 4);
      Tensor alog = In({hv}, 69, dt), dtb = In({hv}, 70, dt);
      Tensor dgamma = In({n, hv}, 71, dt), dbeta = In({n, hv}, 72, dt);
      Tensor da = Tensor::Empty({n, hv}, dt), db = Tensor::Empty({n, hv}, dt);
      Tensor dal = Tensor::Zeros({hv}, dt), ddt = Tensor::Zeros({hv}, dt);
      ops::GatesBackward(a, b, alog, dtb, 2.0, dgamma, dbeta, da, db, dal, ddt);
      const ColumnBuffer ca = InColumns(n, hv, 1, 9, dt);
      const ColumnBuffer cb{ca.buffer, ca.buffer.Columns(5, 5 + hv), 5};
      Tensor dal2 = Tensor::Zeros({hv}, dt), ddt2 = Tensor::Zeros({hv}, dt);
      ops::GatesBackward(a, b, alog, dtb, 2.0, dgamma, dbeta, ca.view, cb.view, dal2, ddt2);
      for (int64_t i = 0; i < n * hv; ++i) {
        EXPECT_EQ(ca.view.at(i), da.at(i)) << "da " << i;
        EXPECT_EQ(cb.view.at(i), db.at(i)) << "db " << i;
      }
      for (int64_t r = 0; r < n; ++r) EXPECT_EQ(ca.buffer.at(r * 9), 7.0) << "column 0, row " << r;
      EXPECT_EQ(RelErr(dal2, dal), 0.0);
      EXPECT_EQ(RelErr(ddt2, ddt), 0.0);
    }
    {  // Matmul's operands, as the mixer's backward takes them: dy^T x and dy W
      const int64_t m = 9, k = 6, n = 5;
      const ColumnBuffer a = InColumns(m, k, 2, 13, dt);
      Tensor a_dense = In({m, k}, 73, dt), b = In({k, n}, 74, dt), bt = In({m, n}, 75, dt);
      for (int64_t i = 0; i < a_dense.numel(); ++i) a.view.set(i, a_dense.at(i));
      Tensor want = Tensor::Empty({m, n}, dt), got = Tensor::Empty({m, n}, dt);
      ops::Matmul(a_dense, false, b, false, want);
      ops::Matmul(a.view, false, b, false, got);
      EXPECT_LT(RelErr(got, want), kExactTol) << "a column view";
      Tensor want_t = Tensor::Empty({k, n}, dt), got_t = Tensor::Empty({k, n}, dt);
      ops::Matmul(a_dense, true, bt, false, want_t);
      ops::Matmul(a.view, true, bt, false, got_t);
      EXPECT_LT(RelErr(got_t, want_t), kExactTol) << "a column view, transposed";
      const ColumnBuffer bcols = InColumns(k, n, 4, 10, dt);
      for (int64_t i = 0; i < b.numel(); ++i) bcols.view.set(i, b.at(i));
      ops::Matmul(a_dense, false, bcols.view, false, got);
      EXPECT_LT(RelErr(got, want), kExactTol) << "b a column view";
    }
  }
}

// The same values read through a column view give the same outputs bit for bit.
Tensor AsColumns(const Tensor& x, int64_t offset, int64_t width) {
  const int64_t cols = x.dim(-1), rows = x.numel() / cols;
  const Tensor view = Filled({rows, width}, 7, x.dtype()).Columns(offset, offset + cols);
  for (int64_t i = 0; i < x.numel(); ++i) view.set(i, x.at(i));
  return view;
}
void ExpectSameValues(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  for (int64_t i = 0; i < got.numel(); ++i) ASSERT_EQ(got.at(i), want.at(i)) << what << " " << i;
}

TEST(OpsTest, ColumnViewInputsEqualContiguousOnes) {
  for (DType dt : {kF32, kF64}) {
    const std::string type = DTypeName(dt);
    {  // the conv's x, forward and backward
      const int64_t B = 2, T = 7, C = 3, K = 4;
      Tensor x = In({B, T, C}, 80, dt), w = In({C, K}, 81, dt), dy = In({B, T, C}, 82, dt);
      const Tensor xv = AsColumns(x.View({B * T, C}), 2, 9).View({B, T, C});
      Tensor y = Tensor::Empty(x.shape(), dt), y2 = Tensor::Empty(x.shape(), dt);
      ops::CausalConvSiluForward(x, w, y);
      ops::CausalConvSiluForward(xv, w, y2);
      ExpectSameValues(y2, y, "conv forward " + type);
      Tensor dx = Tensor::Empty(x.shape(), dt), dx2 = Tensor::Empty(x.shape(), dt);
      Tensor dw = Tensor::Zeros({C, K}, dt), dw2 = Tensor::Zeros({C, K}, dt);
      ops::CausalConvSiluBackward(x, w, dy, dx, dw);
      ops::CausalConvSiluBackward(xv, w, dy, dx2, dw2);
      ExpectSameValues(dx2, dx, "conv backward dx " + type);
      ExpectSameValues(dw2, dw, "conv backward dw " + type);
    }
    {  // the gated norm's g, forward and backward
      const int64_t n = 4, heads = 2, hd = 6;
      Tensor o = In({n, heads * hd}, 83, dt), g = In({n, heads * hd}, 84, dt, -3, 3);
      Tensor w = In({hd}, 85, dt), dy = In({n, heads * hd}, 86, dt);
      const Tensor gv = AsColumns(g, 5, 20);
      Tensor y = Tensor::Empty(o.shape(), dt), y2 = Tensor::Empty(o.shape(), dt);
      Tensor r = Tensor::Empty({n * heads}, dt), r2 = Tensor::Empty({n * heads}, dt);
      ops::GatedRmsNormForward(o, g, w, hd, 1e-5, y, r);
      ops::GatedRmsNormForward(o, gv, w, hd, 1e-5, y2, r2);
      ExpectSameValues(y2, y, "gated norm forward " + type);
      Tensor d_o = Tensor::Empty(o.shape(), dt), d_o2 = Tensor::Empty(o.shape(), dt);
      Tensor dg = Tensor::Empty(o.shape(), dt), dg2 = Tensor::Empty(o.shape(), dt);
      Tensor dw = Tensor::Zeros({hd}, dt), dw2 = Tensor::Zeros({hd}, dt);
      ops::GatedRmsNormBackward(o, g, w, r, hd, dy, d_o, dg, dw);
      ops::GatedRmsNormBackward(o, gv, w, r, hd, dy, d_o2, dg2, dw2);
      ExpectSameValues(d_o2, d_o, "gated norm backward d_o " + type);
      ExpectSameValues(dg2, dg, "gated norm backward dg " + type);
      ExpectSameValues(dw2, dw, "gated norm backward dw " + type);
    }
    {  // the gates' a and b, forward and backward
      const int64_t n = 5, hv = 4;
      Tensor a = In({n, hv}, 87, dt, -4, 4), b = In({n, hv}, 88, dt, -4, 4);
      Tensor alog = In({hv}, 89, dt), dtb = In({hv}, 90, dt);
      const Tensor av = AsColumns(a, 1, 11), bv = AsColumns(b, 6, 11);
      Tensor gm = Tensor::Empty({n, hv}, dt), be = gm.Clone(), gm2 = gm.Clone(), be2 = gm.Clone();
      ops::GatesForward(a, b, alog, dtb, 2.0, gm, be);
      ops::GatesForward(av, bv, alog, dtb, 2.0, gm2, be2);
      ExpectSameValues(gm2, gm, "gates forward gamma " + type);
      ExpectSameValues(be2, be, "gates forward beta " + type);
      Tensor dgm = In({n, hv}, 91, dt), dbe = In({n, hv}, 92, dt);
      Tensor da = Tensor::Empty({n, hv}, dt), db = da.Clone(), da2 = da.Clone(), db2 = da.Clone();
      Tensor dal = Tensor::Zeros({hv}, dt), ddt = dal.Clone();
      Tensor dal2 = dal.Clone(), ddt2 = dal.Clone();
      ops::GatesBackward(a, b, alog, dtb, 2.0, dgm, dbe, da, db, dal, ddt);
      ops::GatesBackward(av, bv, alog, dtb, 2.0, dgm, dbe, da2, db2, dal2, ddt2);
      ExpectSameValues(da2, da, "gates backward da " + type);
      ExpectSameValues(db2, db, "gates backward db " + type);
      ExpectSameValues(dal2, dal, "gates backward da_log " + type);
      ExpectSameValues(ddt2, ddt, "gates backward ddt_bias " + type);
    }
  }
}

TEST(OpsTest, MatmulOperandRowsStacksWeightsWithZeroGaps) {
  Tensor a = In({3, 4}, 76, kF32), b = In({2, 4}, 77, kF32);
  const Tensor s = ops::MatmulOperandRows({a, b}, {0, 4}, 8);  // rows 3, 6 and 7 are gaps
  ASSERT_EQ(s.shape(), (Shape{8, 4}));
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(s.at(i), a.at(i));
  for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(s.at(16 + i), b.at(i));
  for (int64_t i : {12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}) EXPECT_EQ(s.at(i), 0.0) << i;
  const Tensor packed = ops::MatmulOperandRows({a, b}, {0, 3}, 5);
  for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(packed.at(12 + i), b.at(i));
}

TEST(OpsDeathTest, MatmulOperandRowsRefusesOverlaps) {
  Tensor a = In({3, 4}, 76, kF32), b = In({2, 4}, 77, kF32);
  EXPECT_DEATH(ops::MatmulOperandRows({a, b}, {0, 2}, 8), "MatmulOperandRows");
  EXPECT_DEATH(ops::MatmulOperandRows({a, b}, {0, 7}, 8), "MatmulOperandRows");
}

TEST(TensorColumnsTest, SetZeroClearsOnlyItsColumns) {
  Tensor t = Filled({3, 5}, 7, kF32);
  t.Columns(1, 3).SetZero();
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(t.at(i), i % 5 == 1 || i % 5 == 2 ? 0.0 : 7.0) << i;
}

// ------------------------------------------------------------------------ embedding and loss

TEST(OpsTest, EmbeddingForward) {
  const int64_t V = 11, d = 6;
  Tensor tok = Tokens({3, 1, 3, 0, 10, 3, 1, 7, 2});
  for (DType dt : {kF32, kF64}) {
    Tensor table = Rand({V, d}, 44, -1, 1, dt);
    Tensor out = Filled({9, d}, 5, dt);
    ops::EmbeddingForward(tok, table, 1.7, out);
    Vec want(9 * d);
    for (int64_t i = 0; i < 9; ++i)
      for (int64_t j = 0; j < d; ++j) want[i * d + j] = 1.7 * table.at(tok.at(i) * d + j);
    EXPECT_LT(RelErr(out, want), dt == kF64 ? kExactTol : kF32Tol);
  }
}

TEST(OpsTest, EmbeddingBackwardMatchesFiniteDifferences) {
  const int64_t V = 11, d = 4;
  Tensor tok = Tokens({3, 1, 3, 0, 10, 3, 1, 7, 2});  // repeated tokens add up
  Tensor table = Rand({V, d}, 45), R = Rand({9, d}, 46);
  Tensor out = Tensor::Empty({9, d}, kF64);
  auto loss = [&] {
    ops::EmbeddingForward(tok, table, 1.7, out);
    return Dot(out, R);
  };
  const Vec nt = NumGrad(table, loss);
  Tensor dtable = Tensor::Zeros({V, d}, kF64);
  ops::EmbeddingBackward(tok, R, 1.7, dtable);
  EXPECT_LT(RelErr(dtable, nt), kFdTol);
  for (int64_t j = 0; j < d; ++j) {  // rows of unused tokens stay zero
    EXPECT_EQ(dtable.at(4 * d + j), 0.0);
    EXPECT_EQ(dtable.at(9 * d + j), 0.0);
  }
  ExpectAccumulates("Embedding dtable", {V, d},
                    [&](const Tensor& g) { ops::EmbeddingBackward(tok, R, 1.7, g); });
}

// Mean over rows of logsumexp(row) - row[target], in double with the max subtracted.
double NaiveCrossEntropy(const Tensor& logits, const Tensor& targets, Vec* probs = nullptr) {
  const int64_t n = targets.numel(), V = logits.dim(-1);
  double total = 0;
  if (probs) probs->assign(n * V, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits.at(i * V + j));
    double z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(logits.at(i * V + j) - mx);
    const double lse = mx + std::log(z);
    total += lse - logits.at(i * V + static_cast<int64_t>(targets.at(i)));
    if (probs)
      for (int64_t j = 0; j < V; ++j) (*probs)[i * V + j] = std::exp(logits.at(i * V + j) - lse);
  }
  return total / n;
}

TEST(OpsTest, CrossEntropyLossAndGradient) {
  const int64_t n = 7, V = 13;
  Tensor tgt = Tokens({0, 12, 5, 5, 3, 7, 1});
  for (DType dt : {kF32, kF64}) {
    const double tol = dt == kF64 ? kExactTol : kF32Tol;
    Tensor logits = Rand({n, V}, 47, -4, 4, dt);
    Vec probs;
    const double want = NaiveCrossEntropy(logits, tgt, &probs);
    EXPECT_NEAR(ops::CrossEntropy(logits, tgt, Tensor()), want, tol * want);
    const double gs = 0.6;
    Tensor dl = Filled({n, V}, 9, dt);
    EXPECT_NEAR(ops::CrossEntropy(logits, tgt, dl, gs), want, tol * want);
    Vec wd(n * V);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < V; ++j)
        wd[i * V + j] = gs / n * (probs[i * V + j] - (j == tgt.at(i) ? 1 : 0));
    EXPECT_LT(RelErr(dl, wd), tol) << "dlogits";
    // dlogits may alias logits.
    Tensor alias = logits.Clone();
    EXPECT_NEAR(ops::CrossEntropy(alias, tgt, alias, gs), want, tol * want);
    EXPECT_LT(RelErr(alias, wd), tol) << "aliased dlogits";
  }
  // Large, widely spread logits (+1000, and one per row +800 more): the softmax must subtract
  // the row's max, or exp overflows.
  Tensor wide = Rand({n, V}, 48, 996, 1004);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = i * V + (3 * i + 1) % V;
    wide.set(j, wide.at(j) + 800);
  }
  for (DType dt : {kF32, kF64}) {
    Tensor s = wide.To(dt), dl = Tensor::Empty({n, V}, dt);
    Vec probs;
    const double want = NaiveCrossEntropy(s.To(kF64), tgt, &probs);
    const double got = ops::CrossEntropy(s, tgt, dl);
    const double tol = dt == kF64 ? 1e-12 : kF32Tol;
    EXPECT_NEAR(got, want, tol * want) << DTypeName(dt);
    Vec wd(n * V);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < V; ++j)
        wd[i * V + j] = (probs[i * V + j] - (j == tgt.at(i) ? 1 : 0)) / n;
    EXPECT_LT(RelErr(dl, wd), tol) << DTypeName(dt);
  }
}

TEST(OpsTest, CrossEntropyGradientMatchesFiniteDifferences) {
  const int64_t n = 5, V = 9;
  const double gs = 1.7;
  Tensor tgt = Tokens({8, 0, 4, 4, 2});
  Tensor logits = Rand({n, V}, 49, -3, 3);
  const Vec nl = NumGrad(logits, [&] { return gs * ops::CrossEntropy(logits, tgt, Tensor()); });
  Tensor dl = Filled({n, V}, 7);
  ops::CrossEntropy(logits, tgt, dl, gs);
  EXPECT_LT(RelErr(dl, nl), kFdTol);
}

// -------------------------------------------------------------------- gated delta rule

struct Gdr {
  int64_t B, T, H, HV, dk, dv;
  Tensor q, k, v, gamma, beta;
  double scale;
};

// q and k L2-normalised per head (as the model passes them), gamma = log decay in [-1, -0.02],
// beta in (0.05, 0.95).
Gdr MakeGdr(int64_t B, int64_t T, int64_t H, int64_t HV, int64_t dk, int64_t dv, uint64_t seed,
            DType dt = kF64) {
  Gdr g{B, T, H, HV, dk, dv, {}, {}, {}, {}, {}, 0.0};
  g.q = Rand({B, T, H, dk}, seed, -1, 1, kF32).To(kF64);
  g.k = Rand({B, T, H, dk}, seed + 1, -1, 1, kF32).To(kF64);
  for (Tensor* t : {&g.q, &g.k})
    for (int64_t r = 0; r < B * T * H; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dk; ++i) ss += t->at(r * dk + i) * t->at(r * dk + i);
      for (int64_t i = 0; i < dk; ++i)
        t->set(r * dk + i, static_cast<float>(t->at(r * dk + i) / std::sqrt(ss)));
    }
  g.q = g.q.To(dt);
  g.k = g.k.To(dt);
  g.v = Rand({B, T, HV, dv}, seed + 2, -1, 1, kF32).To(dt);
  g.gamma = Rand({B, T, HV}, seed + 3, -1, -0.02, kF32).To(dt);
  g.beta = Rand({B, T, HV}, seed + 4, 0.05, 0.95, kF32).To(dt);
  g.scale = 1 / std::sqrt(static_cast<double>(dk));
  return g;
}

// The recurrence written out with explicit matrices, value head j reading key head
// j / (HV / H): S_t = exp(gamma_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
// o_t = scale * S_t^T q_t, S_0 = 0.
void NaiveGdr(const Gdr& g, Vec& o, Vec& final_state) {
  const int64_t dk = g.dk, dv = g.dv;
  o.assign(g.B * g.T * g.HV * dv, 0.0);
  final_state.assign(g.B * g.HV * dk * dv, 0.0);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t j = 0; j < g.HV; ++j) {
      const int64_t h = j / (g.HV / g.H);
      Vec S(dk * dv, 0.0), M(dk * dk), S2(dk * dv);
      for (int64_t t = 0; t < g.T; ++t) {
        auto K = [&](int64_t i) { return g.k.at(((b * g.T + t) * g.H + h) * dk + i); };
        auto Q = [&](int64_t i) { return g.q.at(((b * g.T + t) * g.H + h) * dk + i); };
        auto V = [&](int64_t i) { return g.v.at(((b * g.T + t) * g.HV + j) * dv + i); };
        const double decay = std::exp(g.gamma.at((b * g.T + t) * g.HV + j));
        const double be = g.beta.at((b * g.T + t) * g.HV + j);
        for (int64_t r = 0; r < dk; ++r)
          for (int64_t c = 0; c < dk; ++c) M[r * dk + c] = (r == c) - be * K(r) * K(c);
        for (int64_t r = 0; r < dk; ++r)
          for (int64_t c = 0; c < dv; ++c) {
            double s = 0;
            for (int64_t p = 0; p < dk; ++p) s += M[r * dk + p] * S[p * dv + c];
            S2[r * dv + c] = decay * s + be * K(r) * V(c);
          }
        S = S2;
        for (int64_t c = 0; c < dv; ++c) {
          double s = 0;
          for (int64_t r = 0; r < dk; ++r) s += S[r * dv + c] * Q(r);
          o[((b * g.T + t) * g.HV + j) * dv + c] = g.scale * s;
        }
      }
      for (int64_t i = 0; i < dk * dv; ++i) final_state[(b * g.HV + j) * dk * dv + i] = S[i];
    }
}

TEST(OpsTest, GatedDeltaRuleForwardChunkedEqualsSequentialAndReference) {
  const Gdr g = MakeGdr(2, 37, 2, 4, 6, 5, 50);
  Vec wo, ws;
  NaiveGdr(g, wo, ws);
  Tensor o0 = Filled(g.v.shape(), 9), s0 = Filled({g.B, g.HV, g.dk, g.dv}, 9);
  ops::GatedDeltaRuleForward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, 0, o0, s0);
  EXPECT_LT(RelErr(o0, wo), kGdrTol) << "sequential o vs reference";
  EXPECT_LT(RelErr(s0, ws), kGdrTol) << "sequential final state vs reference";
  for (int64_t chunk : {16, 5, 64}) {
    Tensor o = Filled(g.v.shape(), 9), s = Filled({g.B, g.HV, g.dk, g.dv}, 9);
    ops::GatedDeltaRuleForward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, chunk, o, s);
    EXPECT_LT(RelErr(o, o0), kGdrTol) << "chunk " << chunk;
    EXPECT_LT(RelErr(s, s0), kGdrTol) << "final state, chunk " << chunk;
    // Without a final state (Tensor()) the output is the same.
    Tensor o2 = Tensor::Empty(g.v.shape(), kF64);
    ops::GatedDeltaRuleForward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, chunk, o2, Tensor());
    EXPECT_LT(RelErr(o2, o0), kGdrTol) << "no final state, chunk " << chunk;
  }
}

struct GdrGrads {
  Tensor dq, dk, dv, dgamma, dbeta;
};
GdrGrads RunGdrBackward(const Gdr& g, const Tensor& d_o, int64_t chunk) {
  const DType dt = g.q.dtype();
  GdrGrads r{Filled(g.q.shape(), 7, dt), Filled(g.k.shape(), 7, dt), Filled(g.v.shape(), 7, dt),
             Filled(g.gamma.shape(), 7, dt), Filled(g.beta.shape(), 7, dt)};
  ops::GatedDeltaRuleBackward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, chunk, d_o, r.dq, r.dk,
                              r.dv, r.dgamma, r.dbeta);
  return r;
}

TEST(OpsTest, GatedDeltaRuleBackwardChunkedEqualsSequential) {
  const Gdr g = MakeGdr(2, 37, 2, 4, 6, 5, 60);
  Tensor d_o = Rand(g.v.shape(), 65);
  const GdrGrads ref = RunGdrBackward(g, d_o, 0);
  for (int64_t chunk : {16, 5, 64}) {
    const GdrGrads got = RunGdrBackward(g, d_o, chunk);
    EXPECT_LT(RelErr(got.dq, ref.dq), kGdrTol) << "dq, chunk " << chunk;
    EXPECT_LT(RelErr(got.dk, ref.dk), kGdrTol) << "dk, chunk " << chunk;
    EXPECT_LT(RelErr(got.dv, ref.dv), kGdrTol) << "dv, chunk " << chunk;
    EXPECT_LT(RelErr(got.dgamma, ref.dgamma), kGdrTol) << "dgamma, chunk " << chunk;
    EXPECT_LT(RelErr(got.dbeta, ref.dbeta), kGdrTol) << "dbeta, chunk " << chunk;
  }
}

TEST(OpsTest, GatedDeltaRuleBackwardMatchesFiniteDifferences) {
  Gdr g = MakeGdr(1, 9, 1, 2, 3, 2, 70);
  Tensor R = Rand(g.v.shape(), 75);
  Tensor o = Tensor::Empty(g.v.shape(), kF64);
  auto loss = [&] {
    ops::GatedDeltaRuleForward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, 0, o, Tensor());
    return Dot(o, R);
  };
  const Vec nq = NumGrad(g.q, loss), nk = NumGrad(g.k, loss), nv = NumGrad(g.v, loss);
  const Vec ng = NumGrad(g.gamma, loss), nb = NumGrad(g.beta, loss);
  for (int64_t chunk : {0, 4}) {
    const GdrGrads got = RunGdrBackward(g, R, chunk);
    EXPECT_LT(RelErr(got.dq, nq), kFdTol) << "dq, chunk " << chunk;
    EXPECT_LT(RelErr(got.dk, nk), kFdTol) << "dk, chunk " << chunk;
    EXPECT_LT(RelErr(got.dv, nv), kFdTol) << "dv, chunk " << chunk;
    EXPECT_LT(RelErr(got.dgamma, ng), kFdTol) << "dgamma, chunk " << chunk;
    EXPECT_LT(RelErr(got.dbeta, nb), kFdTol) << "dbeta, chunk " << chunk;
  }
}

// -------------------------------------------------------------------- optimizer updates

TEST(OpsTest, AdamWUpdateMatchesHandComputedSteps) {
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  for (DType dt : {kF32, kF64}) {
    const Shape s = {257};
    Tensor p = Rand(s, 80, -1, 1, dt), m = Tensor::Zeros(s, dt), v = Tensor::Zeros(s, dt);
    Vec P = Vals(p), M(P.size(), 0.0), V(P.size(), 0.0);
    for (int64_t step = 1; step <= 4; ++step) {
      Tensor g = Rand(s, 80 + step, -1, 1, dt);
      ops::AdamWUpdate(p, g, m, v, lr, b1, b2, eps, wd, step);
      // The kernel works in the tensor's precision, hyperparameters included: 1 - 0.999f is
      // 1.3e-5 off 0.001, so the float32 reference uses the betas rounded to float.
      const double B1 = dt == kF32 ? static_cast<float>(b1) : b1;
      const double B2 = dt == kF32 ? static_cast<float>(b2) : b2;
      for (size_t i = 0; i < P.size(); ++i) {
        M[i] = B1 * M[i] + (1 - B1) * g.at(i);
        V[i] = B2 * V[i] + (1 - B2) * g.at(i) * g.at(i);
        const double mhat = M[i] / (1 - std::pow(B1, step));
        const double vhat = V[i] / (1 - std::pow(B2, step));
        P[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * P[i]);
      }
      const double tol = dt == kF64 ? kExactTol : kF32Tol;
      EXPECT_LT(RelErr(p, P), tol) << DTypeName(dt) << " p, step " << step;
      EXPECT_LT(RelErr(m, M), tol) << DTypeName(dt) << " m, step " << step;
      EXPECT_LT(RelErr(v, V), tol) << DTypeName(dt) << " v, step " << step;
    }
  }
  // First step from zero state: m_hat = g, v_hat = g^2, so p moves by about lr * sign(g).
  Tensor p = Tensor::Zeros({3}, kF64), g = Tensor::Zeros({3}, kF64);
  g.set(0, 0.5);
  g.set(1, -2e-3);
  g.set(2, 30);
  Tensor m = Tensor::Zeros({3}, kF64), v = Tensor::Zeros({3}, kF64);
  ops::AdamWUpdate(p, g, m, v, 0.1, 0.9, 0.95, 1e-12, 0.0, 1);
  EXPECT_NEAR(p.at(0), -0.1, 1e-9);
  EXPECT_NEAR(p.at(1), 0.1, 1e-9);
  EXPECT_NEAR(p.at(2), -0.1, 1e-9);
  // Weight decay alone (g = 0) is decoupled: p -= lr * wd * p.
  Tensor p2 = Filled({2}, 3.0), z = Tensor::Zeros({2}, kF64);
  Tensor m2 = Tensor::Zeros({2}, kF64), v2 = Tensor::Zeros({2}, kF64);
  ops::AdamWUpdate(p2, z, m2, v2, 0.1, 0.9, 0.95, 1e-8, 0.5, 1);
  EXPECT_NEAR(p2.at(0), 3.0 - 0.1 * 0.5 * 3.0, 1e-12);
}

TEST(OpsTest, SgdUpdateMatchesHandComputedSteps) {
  const double lr = 0.05, mu = 0.9, wd = 0.01;
  for (DType dt : {kF32, kF64}) {
    const Shape s = {129};
    Tensor p = Rand(s, 90, -1, 1, dt), buf = Tensor::Zeros(s, dt);
    Vec P = Vals(p), Bf(P.size(), 0.0);
    for (int step = 1; step <= 4; ++step) {
      Tensor g = Rand(s, 90 + step, -1, 1, dt);
      ops::SgdUpdate(p, g, buf, lr, mu, wd);
      for (size_t i = 0; i < P.size(); ++i) {
        Bf[i] = mu * Bf[i] + g.at(i) + wd * P[i];
        P[i] -= lr * Bf[i];
      }
      const double tol = dt == kF64 ? kExactTol : kF32Tol;
      EXPECT_LT(RelErr(p, P), tol) << DTypeName(dt) << " p, step " << step;
      EXPECT_LT(RelErr(buf, Bf), tol) << DTypeName(dt) << " buf, step " << step;
    }
  }
}

// ------------------------------------------------------------------- float32 vs float64

TEST(OpsTest, Float32MatchesFloat64) {
  ExpectF32MatchesF64("Matmul", [](DType dt) {
    Tensor a = In({40, 33}, 100, dt), b = In({35, 33}, 101, dt), c = In({40, 35}, 102, dt);
    ops::Matmul(a, false, b, true, c, 0.5, 1.0);
    return std::vector<Tensor>{c};
  });
  ExpectF32MatchesF64("Swiglu", [](DType dt) {
    Tensor g = In({8, 9}, 103, dt, -5, 5), u = In({8, 9}, 104, dt), dh = In({8, 9}, 105, dt);
    Tensor h = Tensor::Empty(g.shape(), dt), dg = Tensor::Empty(g.shape(), dt),
           du = Tensor::Empty(g.shape(), dt);
    ops::SwigluForward(g, u, h);
    ops::SwigluBackward(g, u, dh, dg, du);
    return std::vector<Tensor>{h, dg, du};
  });
  ExpectF32MatchesF64("RmsNorm", [](DType dt) {
    Tensor x = In({6, 32}, 106, dt, -2, 2), w = In({32}, 107, dt), dy = In({6, 32}, 108, dt);
    Tensor y = Tensor::Empty(x.shape(), dt), r = Tensor::Empty({6}, dt);
    Tensor dx = Tensor::Empty(x.shape(), dt), dw = Tensor::Zeros({32}, dt);
    ops::RmsNormForward(x, w, 1e-5, y, r);
    ops::RmsNormBackward(x, w, r, dy, dx, dw);
    return std::vector<Tensor>{y, dx, dw};
  });
  ExpectF32MatchesF64("GatedRmsNorm", [](DType dt) {
    Tensor o = In({5, 24}, 109, dt, -2, 2), g = In({5, 24}, 110, dt, -3, 3);
    Tensor w = In({8}, 111, dt), dy = In({5, 24}, 112, dt);
    Tensor y = Tensor::Empty(o.shape(), dt), r = Tensor::Empty({15}, dt);
    Tensor d_o = Tensor::Empty(o.shape(), dt), dg = Tensor::Empty(o.shape(), dt),
           dw = Tensor::Zeros({8}, dt);
    ops::GatedRmsNormForward(o, g, w, 8, 1e-5, y, r);
    ops::GatedRmsNormBackward(o, g, w, r, 8, dy, d_o, dg, dw);
    return std::vector<Tensor>{y, d_o, dg, dw};
  });
  ExpectF32MatchesF64("CausalConvSilu", [](DType dt) {
    Tensor x = In({2, 9, 6}, 113, dt, -2, 2), w = In({6, 4}, 114, dt), dy = In({2, 9, 6}, 115, dt);
    Tensor y = Tensor::Empty(x.shape(), dt);
    Tensor dx = Tensor::Empty(x.shape(), dt), dw = Tensor::Zeros({6, 4}, dt);
    ops::CausalConvSiluForward(x, w, y);
    ops::CausalConvSiluBackward(x, w, dy, dx, dw);
    return std::vector<Tensor>{y, dx, dw};
  });
  ExpectF32MatchesF64("Gates", [](DType dt) {
    Tensor a = GateInputA(6, 4, 116, kF32).To(dt), b = In({6, 4}, 117, dt, -4, 4);
    Tensor al = In({4}, 118, dt), dtb = In({4}, 119, dt);
    Tensor dgm = In({6, 4}, 120, dt), dbe = In({6, 4}, 121, dt);
    Tensor gm = Tensor::Empty({6, 4}, dt), be = Tensor::Empty({6, 4}, dt);
    Tensor da = Tensor::Empty({6, 4}, dt), db = Tensor::Empty({6, 4}, dt);
    Tensor dal = Tensor::Zeros({4}, dt), ddt = Tensor::Zeros({4}, dt);
    ops::GatesForward(a, b, al, dtb, 2.0, gm, be);
    ops::GatesBackward(a, b, al, dtb, 2.0, dgm, dbe, da, db, dal, ddt);
    return std::vector<Tensor>{gm, be, da, db, dal, ddt};
  });
  ExpectF32MatchesF64("CrossEntropy", [](DType dt) {
    Tensor logits = In({6, 50}, 122, dt, -5, 5), tgt = Tokens({0, 49, 7, 7, 20, 3});
    Tensor dl = Tensor::Empty(logits.shape(), dt);
    Tensor loss = Tensor::Empty({1}, dt);
    loss.set(0, ops::CrossEntropy(logits, tgt, dl, 1.0));
    return std::vector<Tensor>{loss, dl};
  });
  ExpectF32MatchesF64(
      "GatedDeltaRule chunked",
      [](DType dt) {
        const Gdr g = MakeGdr(1, 37, 2, 4, 8, 8, 123, dt);
        Tensor o = Tensor::Empty(g.v.shape(), dt), s = Tensor::Empty({1, 4, 8, 8}, dt);
        ops::GatedDeltaRuleForward(g.q, g.k, g.v, g.gamma, g.beta, g.scale, 16, o, s);
        Tensor d_o = In(g.v.shape(), 124, dt);
        const GdrGrads gr = RunGdrBackward(g, d_o, 16);
        return std::vector<Tensor>{o, s, gr.dq, gr.dk, gr.dv, gr.dgamma, gr.dbeta};
      },
      1e-4);
}


// --- vocabulary parallel: each "rank" holds a block of columns (or rows); the collectives are
// simulated by reducing the shards' stats by hand.

// Columns [c0, c1) of a [n, V] tensor as a contiguous [n, c1 - c0] tensor.
Tensor Columns(const Tensor& t, int64_t c0, int64_t c1) {
  const int64_t n = t.dim(0), V = t.dim(1);
  Tensor out = Tensor::Empty({n, c1 - c0}, t.dtype());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = c0; j < c1; ++j) out.set(i * (c1 - c0) + j - c0, t.at(i * V + j));
  return out;
}

TEST(OpsTest, VocabParallelCrossEntropyEqualsFullForEveryShardCount) {
  const int64_t n = 6, V = 12;
  Tensor tgt = Tokens({0, 11, 5, 6, 3, 8});
  Tensor logits = Rand({n, V}, 71, -6, 6);
  Vec probs;
  const double want = NaiveCrossEntropy(logits, tgt, &probs);
  for (int64_t shards : {1, 2, 3, 4}) {
    SCOPED_TRACE(shards);
    const int64_t w = V / shards;
    std::vector<Tensor> part, mx, se, tl;
    Tensor row_max = Filled({n}, -1e300), sum_exp = Filled({n}, 0), target = Filled({n}, 0);
    for (int64_t r = 0; r < shards; ++r) {  // RowMax, then the max over ranks
      part.push_back(Columns(logits, r * w, (r + 1) * w));
      mx.push_back(Tensor::Empty({n}, kF64));
      ops::RowMax(part[r], mx[r]);
      for (int64_t i = 0; i < n; ++i) row_max.set(i, std::max(row_max.at(i), mx[r].at(i)));
    }
    for (int64_t r = 0; r < shards; ++r) {  // SoftmaxRowStats, then the sums over ranks
      se.push_back(Tensor::Empty({n}, kF64));
      tl.push_back(Tensor::Empty({n}, kF64));
      ops::SoftmaxRowStats(part[r], tgt, r * w, row_max, se[r], tl[r]);
      for (int64_t i = 0; i < n; ++i) {
        sum_exp.set(i, sum_exp.at(i) + se[r].at(i));
        target.set(i, target.at(i) + tl[r].at(i));
      }
    }
    const double gs = 0.7;
    for (int64_t r = 0; r < shards; ++r) {
      Tensor dl = part[r].Clone();  // aliasing the logits, as the model does
      const double loss =
          ops::CrossEntropyFromStats(part[r], tgt, r * w, row_max, sum_exp, target, dl, gs);
      EXPECT_NEAR(loss, want, kExactTol * want);
      Vec wd(n * w);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < w; ++j)
          wd[i * w + j] = gs / n * (probs[i * V + r * w + j] - (r * w + j == tgt.at(i) ? 1 : 0));
      EXPECT_LT(RelErr(dl, wd), kExactTol) << "rank " << r;
    }
  }
}

TEST(OpsTest, VocabParallelEmbeddingSumsToFull) {
  const int64_t V = 12, d = 5;
  Tensor tok = Tokens({3, 11, 0, 7, 3, 6});
  Tensor table = Rand({V, d}, 72);
  Tensor full = Tensor::Empty({6, d}, kF64);
  ops::EmbeddingForward(tok, table, 1.3, full);
  Tensor full_grad = Filled({V, d}, 0);
  Tensor dout = Rand({6, d}, 73);
  ops::EmbeddingBackward(tok, dout, 1.3, full_grad);
  for (int64_t shards : {2, 3, 4}) {
    const int64_t rows = V / shards;
    Vec sum(6 * d, 0.0);
    for (int64_t r = 0; r < shards; ++r) {
      Tensor shard = table.Rows(r * rows, (r + 1) * rows).Clone();
      Tensor out = Filled({6, d}, 9);
      ops::EmbeddingForward(tok, shard, 1.3, out, r * rows);
      for (int64_t i = 0; i < 6 * d; ++i) sum[i] += out.at(i);
      // Each shard's gradient is its rows of the full gradient (other tokens give none).
      Tensor grad = Filled({rows, d}, 0);
      ops::EmbeddingBackward(tok, dout, 1.3, grad, r * rows);
      EXPECT_LT(RelErr(grad, Vals(full_grad.Rows(r * rows, (r + 1) * rows))), kExactTol);
    }
    EXPECT_LT(RelErr(Vec(sum), Vals(full)), kExactTol) << shards << " shards";
  }
}

// --- decoding steps: a run of one-token steps equals the whole-sequence ops.

// Slice t of a [B, T, rest...] tensor as a contiguous [B, rest...] tensor.
Tensor TimeSlice(const Tensor& x, int64_t t) {
  const int64_t B = x.dim(0), T = x.dim(1), n = x.numel() / (B * T);
  Shape shape = x.shape();
  shape.erase(shape.begin() + 1);
  Tensor out = Tensor::Empty(shape, x.dtype());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) out.set(b * n + i, x.at((b * T + t) * n + i));
  return out;
}

TEST(OpsTest, CausalConvSiluStepEqualsForward) {
  const int64_t B = 2, T = 9, C = 5, K = 4;
  Tensor x = Rand({B, T, C}, 91, -2, 2), w = Rand({C, K}, 92);
  Tensor y = Tensor::Empty(x.shape(), kF64);
  ops::CausalConvSiluForward(x, w, y);
  Tensor window = Filled({B, K - 1, C}, 0);
  for (int64_t t = 0; t < T; ++t) {
    Tensor yt = Filled({B, C}, 9);
    ops::CausalConvSiluStep(TimeSlice(x, t), w, window, yt);
    EXPECT_LT(RelErr(yt, Vals(TimeSlice(y, t))), kExactTol) << "step " << t;
  }
  // The window ends holding the last K - 1 inputs, oldest first.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < K - 1; ++j)
      for (int64_t c = 0; c < C; ++c)
        EXPECT_EQ(window.at((b * (K - 1) + j) * C + c), x.at((b * T + T - K + 1 + j) * C + c));
}

TEST(OpsTest, GatedDeltaRuleStepEqualsReference) {
  const Gdr g = MakeGdr(2, 13, 2, 4, 6, 5, 93);  // grouped values: HV = 2 H
  Vec wo, ws;
  NaiveGdr(g, wo, ws);
  Tensor state = Filled({g.B, g.HV, g.dk, g.dv}, 0);
  Tensor o = Tensor::Empty(g.v.shape(), kF64);
  for (int64_t t = 0; t < g.T; ++t) {
    Tensor ot = Filled({g.B, g.HV, g.dv}, 9);
    ops::GatedDeltaRuleStep(TimeSlice(g.q, t), TimeSlice(g.k, t), TimeSlice(g.v, t),
                            TimeSlice(g.gamma, t), TimeSlice(g.beta, t), g.scale, state, ot);
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t i = 0; i < g.HV * g.dv; ++i)
        o.set((b * g.T + t) * g.HV * g.dv + i, ot.at(b * g.HV * g.dv + i));
  }
  EXPECT_LT(RelErr(o, wo), kGdrTol) << "outputs";
  EXPECT_LT(RelErr(state, ws), kGdrTol) << "final state";
}

}  // namespace
}  // namespace gdn
