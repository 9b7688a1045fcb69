// The chunked gated delta rule on CUDA (kernels/cuda/gated_delta_rule.cuh) against the sequential
// CPU reference in float64 (kernels/cpu/gated_delta_rule.h), forward and backward, fp32 and bf16,
// on fresh random inputs at several shapes and gate regimes. Without a GPU every test skips.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/gated_delta_rule.h"
#include "kernels/cuda/gated_delta_rule.cuh"

namespace gdn {
namespace {

#define SKIP_WITHOUT_GPU()                                                   \
  do {                                                                       \
    int n_ = 0;                                                              \
    const cudaError_t e_ = cudaGetDeviceCount(&n_);                          \
    if (e_ != cudaSuccess || n_ == 0)                                        \
      GTEST_SKIP() << "no CUDA device: "                                     \
                   << (e_ != cudaSuccess ? cudaGetErrorString(e_) : "0 devices"); \
  } while (0)

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// kMixed: gates at 1 (gamma = 0), very strong decay (-30) and random ones side by side in a chunk.
enum class GateKind { kRandom, kOne, kStrong, kMixed };
const char* GateName(GateKind g) {
  return g == GateKind::kRandom ? "random"
         : g == GateKind::kOne  ? "gamma=0"
         : g == GateKind::kStrong ? "gamma=-30"
                                  : "mixed";
}

struct Case {
  int B, T, H, HV, dk, dv;
  GateKind gates;
  double beta_max;  // beta ~ U(0, beta_max): 1, or 2 for negative eigenvalues
};

std::string CaseName(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "B=%d T=%d H=%d HV=%d dk=%d dv=%d gates=%s beta<%g", c.B, c.T,
                c.H, c.HV, c.dk, c.dv, GateName(c.gates), c.beta_max);
  return buf;
}

// Host <-> device element conversions.
template <typename T>
T FromDouble(double x);
template <>
float FromDouble<float>(double x) { return static_cast<float>(x); }
template <>
__nv_bfloat16 FromDouble<__nv_bfloat16>(double x) { return __float2bfloat16(static_cast<float>(x)); }
double ToDouble(float x) { return x; }
double ToDouble(__nv_bfloat16 x) { return __bfloat162float(x); }

// A device buffer of n elements, filled with NaN bytes (0xff) so unwritten outputs show.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) p = nullptr;
    if (p) cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T));
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

// Rounds x to T in place (so the reference sees exactly the device's inputs) and uploads it.
template <typename T>
void Upload(std::vector<double>& x, DevBuf<T>& d) {
  std::vector<T> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = FromDouble<T>(x[i]);
    x[i] = ToDouble(h[i]);
  }
  ASSERT_NE(d.p, nullptr);
  CUDA_OK(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
std::vector<double> Download(const DevBuf<T>& d) {
  std::vector<T> h(d.n);
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, h.size() * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  std::vector<double> out(d.n);
  for (size_t i = 0; i < d.n; ++i) out[i] = ToDouble(h[i]);
  return out;
}

// ||got - ref|| / ||ref|| and max|got - ref| / max|ref| must both stay under tol; no NaN. With
// `terms` (the same output of the reference run on the inputs' absolute values), the norms of
// ref are at least those of terms: an output that cancels is measured against its terms' size.
void ExpectClose(const std::vector<double>& got, const std::vector<double>& ref, double tol,
                 const char* name, const std::string& where,
                 const std::vector<double>* terms = nullptr) {
  ASSERT_EQ(got.size(), ref.size()) << name;
  double num = 0, den = 0, maxerr = 0, maxref = 0;
  size_t nan = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    den += ref[i] * ref[i];
    maxref = std::max(maxref, std::fabs(ref[i]));
    if (!std::isfinite(got[i])) {
      ++nan;
      continue;
    }
    const double e = got[i] - ref[i];
    num += e * e;
    maxerr = std::max(maxerr, std::fabs(e));
  }
  if (terms != nullptr) {
    double t2 = 0, tmax = 0;
    for (double x : *terms) t2 += x * x, tmax = std::max(tmax, std::fabs(x));
    den = std::max(den, t2), maxref = std::max(maxref, tmax);
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  const double rmax = maxref > 0 ? maxerr / maxref : maxerr;
  std::printf("  %-12s rel %.3e  maxabs/maxref %.3e  (|ref|max %.3e)%s\n", name, rel, rmax, maxref,
              nan ? "  NON-FINITE" : "");
  EXPECT_EQ(nan, 0u) << name << " has non-finite values (unwritten?) at " << where;
  EXPECT_LE(rel, tol) << name << " at " << where;
  EXPECT_LE(rmax, tol) << name << " at " << where;
}

struct Inputs {
  std::vector<double> q, k, v, gamma, beta, d_o;
};

Inputs MakeInputs(const Case& c, std::mt19937_64& rng) {
  const size_t nqk = size_t(c.B) * c.T * c.H * c.dk, nv = size_t(c.B) * c.T * c.HV * c.dv;
  const size_t ng = size_t(c.B) * c.T * c.HV;
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  Inputs in;
  in.q.resize(nqk), in.k.resize(nqk), in.v.resize(nv), in.d_o.resize(nv);
  in.gamma.resize(ng), in.beta.resize(ng);
  for (auto* x : {&in.q, &in.k}) {  // L2-normalised per head, as the layer feeds them
    for (size_t r = 0; r < nqk / c.dk; ++r) {
      double n2 = 0;
      for (int i = 0; i < c.dk; ++i) {
        const double y = normal(rng);
        (*x)[r * c.dk + i] = y;
        n2 += y * y;
      }
      for (int i = 0; i < c.dk; ++i) (*x)[r * c.dk + i] /= std::sqrt(n2);
    }
  }
  for (auto& x : in.v) x = normal(rng);
  for (auto& x : in.d_o) x = normal(rng);
  for (size_t i = 0; i < ng; ++i) {
    GateKind g = c.gates;
    if (g == GateKind::kMixed) {
      const double u = uni(rng);
      g = u < 0.35 ? GateKind::kOne : u < 0.6 ? GateKind::kStrong : GateKind::kRandom;
    }
    switch (g) {
      case GateKind::kRandom: {  // log sigmoid of N(1.5, 1.5^2): from about -0.01 to -4
        const double z = 1.5 + 1.5 * normal(rng);
        in.gamma[i] = -std::log1p(std::exp(-z));
        break;
      }
      case GateKind::kOne: in.gamma[i] = 0.0; break;
      case GateKind::kStrong: in.gamma[i] = -30.0; break;
      case GateKind::kMixed: break;  // drawn above
    }
    in.beta[i] = c.beta_max * (0.02 + 0.98 * uni(rng));
  }
  return in;
}

// The chunked kernel's forward then backward on `in` (rounded to T in place): o, final_state, dq,
// dk, dv, dgamma, dbeta. With `save`, the forward fills a saved buffer (which starts as NaN bytes)
// and the backward reads it instead of recomputing the forward's intermediates. Without
// `final_state` the forward is given none (that output stays NaN bytes).
template <typename T>
std::vector<std::vector<double>> RunGpu(const Case& c, Inputs& in, cuda::GdrProducts products,
                                        bool save, bool final_state = true) {
  const size_t nqk = in.q.size(), nv = in.v.size(), ng = in.gamma.size();
  const size_t ns = size_t(c.B) * c.HV * c.dk * c.dv;
  DevBuf<T> q(nqk), k(nqk), v(nv), d_o(nv), o(nv), dq(nqk), dk(nqk), dv(nv);
  DevBuf<float> gamma(ng), beta(ng), state(ns), dgamma(ng), dbeta(ng);
  Upload(in.q, q), Upload(in.k, k), Upload(in.v, v), Upload(in.d_o, d_o);
  Upload(in.gamma, gamma), Upload(in.beta, beta);
  const float scale = float(1.0 / std::sqrt(double(c.dk)));
  const cuda::GdrShape shape{c.B, c.T, c.H, c.HV, c.dk, c.dv};
  DevBuf<float> saved(save ? cuda::GdrSavedFloats(shape) : 0);
  float* sv = save ? saved.p : nullptr;
  float* fs = final_state ? state.p : nullptr;
  if constexpr (std::is_same_v<T, float>) {
    cuda::GdrForward(shape, q.p, k.p, v.p, gamma.p, beta.p, scale, o.p, fs, nullptr, products,
                     sv);
    cuda::GdrBackward(shape, q.p, k.p, v.p, gamma.p, beta.p, scale, d_o.p, dq.p, dk.p, dv.p,
                      dgamma.p, dbeta.p, nullptr, products, sv);
  } else {
    cuda::GdrForward(shape, q.p, k.p, v.p, gamma.p, beta.p, scale, o.p, fs, nullptr, sv);
    cuda::GdrBackward(shape, q.p, k.p, v.p, gamma.p, beta.p, scale, d_o.p, dq.p, dk.p, dv.p,
                      dgamma.p, dbeta.p, nullptr, sv);
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return {Download(o),  Download(state),  Download(dq), Download(dk),
          Download(dv), Download(dgamma), Download(dbeta)};
}

// tol bounds the outputs of type T; tol_f32 the fp32 ones (final_state, dgamma, dbeta), which in
// a bf16 run carry no output rounding: a tight bound there catches intermediate products that
// lost precision (bf16-rounded chunk-local operands gave 2e-3 there, and 2e-2 on dq at T = 1).
template <typename T>
void RunCase(const Case& c, double tol, double tol_f32, std::mt19937_64& rng,
             cuda::GdrProducts products = cuda::GdrProducts::kFloat32) {
  const std::string where = CaseName(c);
  SCOPED_TRACE(where);
  std::printf("%s %s\n", sizeof(T) == 4 ? "fp32" : "bf16", where.c_str());
  Inputs in = MakeInputs(c, rng);
  const size_t nqk = in.q.size(), nv = in.v.size(), ng = in.gamma.size();
  const size_t ns = size_t(c.B) * c.HV * c.dk * c.dv;
  const std::vector<std::vector<double>> got = RunGpu<T>(c, in, products, false);
  const double scale = 1.0 / std::sqrt(double(c.dk));

  // The float64 reference: outputs o, final_state, dq, dk, dv, dgamma, dbeta.
  const cpu::GdrShape cs{c.B, c.T, c.H, c.HV, c.dk, c.dv};
  auto reference = [&](const Inputs& x) {
    std::vector<std::vector<double>> r = {std::vector<double>(nv),  std::vector<double>(ns),
                                          std::vector<double>(nqk), std::vector<double>(nqk),
                                          std::vector<double>(nv),  std::vector<double>(ng),
                                          std::vector<double>(ng)};
    cpu::GdrRecurrentForward<double>(cs, x.q.data(), x.k.data(), x.v.data(), x.gamma.data(),
                                     x.beta.data(), scale, nullptr, r[0].data(), r[1].data());
    cpu::GdrRecurrentBackward<double>(cs, x.q.data(), x.k.data(), x.v.data(), x.gamma.data(),
                                      x.beta.data(), scale, nullptr, x.d_o.data(), nullptr,
                                      r[2].data(), r[3].data(), r[4].data(), r[5].data(),
                                      r[6].data(), nullptr);
    return r;
  };
  const auto ref = reference(in);
  // At T = 1 each output is a single product (o = s (q . k) beta v), which can cancel to any
  // degree (q . k at 3e-4 of |q| |k| was seen, an error of 1e-7 then being 3e-4 of it): errors
  // there are measured against the terms' size too, the reference on |q|, |k|, |v|, |dO|.
  std::vector<std::vector<double>> terms;
  if (c.T == 1) {
    Inputs a = in;
    for (auto* x : {&a.q, &a.k, &a.v, &a.d_o})
      for (double& y : *x) y = std::fabs(y);
    terms = reference(a);
  }
  auto check = [&](const std::vector<double>& got, int i, double bound, const char* name) {
    ExpectClose(got, ref[i], bound, name, where, terms.empty() ? nullptr : &terms[i]);
  };
  check(got[0], 0, tol, "o");
  check(got[1], 1, tol_f32, "final_state");
  check(got[2], 2, tol, "dq");
  check(got[3], 3, tol, "dk");
  check(got[4], 4, tol, "dv");
  check(got[5], 5, tol_f32, "dgamma");
  check(got[6], 6, tol_f32, "dbeta");
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {2, 64, 2, 4, 64, 64, GateKind::kRandom, 1.0},
      {1, 1, 1, 2, 64, 128, GateKind::kRandom, 1.0},
      {2, 63, 2, 4, 128, 64, GateKind::kOne, 1.0},
      {1, 65, 2, 4, 128, 128, GateKind::kStrong, 1.0},
      {2, 200, 2, 4, 128, 128, GateKind::kRandom, 2.0},
      {1, 200, 1, 2, 64, 256, GateKind::kOne, 2.0},
      {1, 130, 1, 2, 256, 64, GateKind::kRandom, 1.0},
      {1, 200, 1, 2, 256, 256, GateKind::kStrong, 2.0},
      {2, 150, 3, 3, 64, 128, GateKind::kRandom, 1.0},  // HV == H
      // dk = dv = 192: three tiles each (GradKernel's second pair of dk tiles has one; the
      // half-tile loops of PrepKernel and DvLocalKernel end on a single tile).
      {1, 97, 1, 2, 192, 192, GateKind::kRandom, 1.0},
      {1, 150, 1, 2, 128, 128, GateKind::kMixed, 1.0},
      {2, 100, 2, 4, 64, 256, GateKind::kMixed, 2.0},
  };
  return cases;
}

// A fresh seed each run, printed; GDN_TEST_SEED=<n> repeats a run.
std::mt19937_64 FreshRng() {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("GDN_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  return std::mt19937_64(seed);
}

TEST(CudaGatedDeltaRule, Float32MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  auto rng = FreshRng();
  for (const Case& c : Cases()) RunCase<float>(c, 1e-5, 1e-5, rng);
}

// fp32 inputs with the bf16 mode's products (split-bf16 tensor cores): about 16 significant bits
// per operand, measured up to 2.1e-5; a plain bf16 rounding of the operands would give 2e-3.
TEST(CudaGatedDeltaRule, Float32SplitBf16ProductsMatchFloat64Reference) {
  SKIP_WITHOUT_GPU();
  auto rng = FreshRng();
  for (const Case& c : Cases()) RunCase<float>(c, 1e-4, 1e-4, rng, cuda::GdrProducts::kSplitBf16);
}

TEST(CudaGatedDeltaRule, Bfloat16MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  auto rng = FreshRng();
  for (const Case& c : Cases()) RunCase<__nv_bfloat16>(c, 1e-2, 1e-4, rng);
}

// The saved forward: the backward reading the forward's intermediates gives the same results bit
// for bit, at every shape, in each input type and product mode. (A backward that ignored the
// buffer would pass this too: CudaOpsTest.GatedDeltaRuleSavedForward shows it is read.)
TEST(CudaGatedDeltaRule, SavedForwardGivesTheSameResults) {
  SKIP_WITHOUT_GPU();
  auto rng = FreshRng();
  const char* names[] = {"o", "final_state", "dq", "dk", "dv", "dgamma", "dbeta"};
  auto check = [&](const auto& want, const auto& got) {
    for (int i = 0; i < 7; ++i) EXPECT_TRUE(got[i] == want[i]) << names[i];
  };
  using cuda::GdrProducts;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(CaseName(c));
    Inputs in = MakeInputs(c, rng);
    for (GdrProducts p : {GdrProducts::kFloat32, GdrProducts::kSplitBf16})
      check(RunGpu<float>(c, in, p, false), RunGpu<float>(c, in, p, true));
    check(RunGpu<__nv_bfloat16>(c, in, GdrProducts::kSplitBf16, false),
          RunGpu<__nv_bfloat16>(c, in, GdrProducts::kSplitBf16, true));
  }
}

// The forward without final_state, and the same inputs twice: the kernels use no atomics, so
// repeated runs agree bit for bit.
TEST(CudaGatedDeltaRule, DeterministicAndOptionalFinalState) {
  SKIP_WITHOUT_GPU();
  auto rng = FreshRng();
  const Case c{2, 100, 2, 4, 128, 64, GateKind::kRandom, 1.0};
  Inputs in = MakeInputs(c, rng);
  std::vector<std::vector<double>> runs;
  for (int rep = 0; rep < 2; ++rep) {
    // o, dq, dk, dv, dgamma, dbeta (the final state, index 1, was not asked for).
    std::vector<std::vector<double>> out =
        RunGpu<float>(c, in, cuda::GdrProducts::kFloat32, false, false);
    std::vector<double> all;
    for (int i : {0, 2, 3, 4, 5, 6}) all.insert(all.end(), out[i].begin(), out[i].end());
    for (double x : all) ASSERT_TRUE(std::isfinite(x));
    runs.push_back(std::move(all));
  }
  EXPECT_EQ(runs[0], runs[1]);
}

// Bad shapes and misaligned inputs stop before any device work, so this runs without a GPU too.
TEST(CudaGatedDeltaRuleDeathTest, RejectsBadShapesAndAlignment) {
  const float* null = nullptr;
  float* out = nullptr;
  EXPECT_DEATH(cuda::GdrForward({1, 8, 2, 3, 64, 64}, null, null, null, null, null, 1.f, out,
                                nullptr, nullptr),
               "HV must be a positive multiple of H");
  EXPECT_DEATH(cuda::GdrForward({1, 8, 2, 2, 96, 64}, null, null, null, null, null, 1.f, out,
                                nullptr, nullptr),
               "dk must be 64, 128, 192 or 256");
  EXPECT_DEATH(cuda::GdrBackward({1, 8, 2, 2, 64, 512}, null, null, null, null, null, 1.f, null,
                                 out, out, out, out, out, nullptr),
               "dv must be 64, 128, 192 or 256");
  const float* odd = reinterpret_cast<const float*>(uintptr_t{0x1004});
  EXPECT_DEATH(cuda::GdrBackward({1, 8, 2, 2, 64, 64}, null, null, null, null, null, 1.f, odd,
                                 out, out, out, out, out, nullptr),
               "d_o is not 16-byte aligned");
  float* odd_out = reinterpret_cast<float*>(uintptr_t{0x1004});
  EXPECT_DEATH(cuda::GdrBackward({1, 8, 2, 2, 64, 64}, null, null, null, null, null, 1.f, null,
                                 out, out, odd_out, out, out, nullptr),
               "dv is not 16-byte aligned");
}

}  // namespace
}  // namespace gdn
