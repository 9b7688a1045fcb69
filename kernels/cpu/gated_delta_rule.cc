// The gated delta rule on the CPU (see gated_delta_rule.h and docs/gated-delta-rule.md).
//
// Chunked form, per value head and chunk of L <= C tokens (i, j index tokens of the chunk, S is the
// state at the chunk start, s the scale):
//   G_i = sum_{m<=i} gamma_m,  Gam_i = exp(G_i),  e_i = exp(G_{L-1} - G_i),  E_ij = exp(G_i - G_j)
//   A = K K^T,  M_ij = beta_i A_ij E_ij (i > j),  T = (I + M)^-1
//   R  = V - diag(Gam) K S                       (value minus the decayed state's prediction)
//   V' = T diag(beta) R                          (= U - W S of the doc: U = T diag(beta) V,
//                                                  W = T diag(beta Gam) K; these are the u_t)
//   O  = s [ diag(Gam) Q S + P V' ],   P = tril_incl(Q K^T) * E
//   S' = Gam_{L-1} S + K^T diag(e) V'
// V' is obtained by forward substitution with (I + M), which is the same as forming T by forward
// substitution and multiplying, at a fraction of the cost (no C^3 term, no W, U buffers).
// E_ij (i >= j) is the product alpha_{j+1} ... alpha_i of the gates alpha = exp(gamma) <= 1, built
// row by row (E_i. = alpha_i E_{i-1,.}); Gam and e are exp of (partial) sums of gammas. No
// exponent is ever positive and nothing is divided by a decay, so gamma = 0 and gamma = -30 are
// both exact (underflow to 0 is the correct limit).
//
// Backward of one chunk, given dO and D = dL/dS' (Y = T^T dV', i.e. a back substitution;
// X1_i = S dO_i, X2_i = S Y_i, X3_i = D V'_i):
//   dV' = s P^T dO + diag(e) K D            de_j = (K D)_j . V'_j
//   dP  = s dO V'^T (i >= j)                 dM  = -Y V'^T (i > j)
//        (dM = -T^T dT T^T with dT = dV' (diag(beta) R)^T, and T^T dV' = Y, T diag(beta) R = V')
//   dv_j = beta_j Y_j                        dbeta_i = R_i . Y_i + sum_{j<i} dM_ij A_ij E_ij,
//                                            R_i . Y_i = v_i . Y_i - Gam_i k_i . X2_i
//   dGam_i = s (QS)_i . dO_i - beta_i (KS)_i . Y_i = s q_i . X1_i - beta_i k_i . X2_i
//   dE_ij = dP_ij (q_i.k_j) + dM_ij beta_i A_ij,   dQK = dP * E,   dA = dM * beta_i E
//   dQ = dQK K + s diag(Gam) X1
//   dK = dQK^T Q + (dA + dA^T) K + diag(e) X3 - diag(Gam beta) X2
//   dS = Gam_{L-1} D + s Q^T diag(Gam) dO - K^T diag(Gam beta) Y
//   dG_i = dGam_i Gam_i + sum_{j<i} dE_ij E_ij - sum_{j>i} dE_ji E_ji - de_i e_i
//          (+ sum_{j<L-1} de_j e_j + <D, S> Gam_{L-1} for i = L-1),   dgamma_j = sum_{i>=j} dG_i.
// Terms that cancel exactly (E_ii = 1, e_{L-1} = 1) are skipped rather than added and subtracted,
// which would lose the tiny decay gradients of strongly decayed chunks to rounding.
// The backward first re-runs the forward over the chunks of a head to keep the chunk-start states
// and V', then walks the chunks in reverse carrying D.
#include "kernels/cpu/gated_delta_rule.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace gdn::cpu {
namespace {

// ----------------------------------------------------------------------------------------------
// Small dense helpers.

template <typename T>
inline void Axpy(int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
inline T Dot(int64_t n, const T* __restrict x, const T* __restrict y) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// y = a * (x + c * z)
template <typename T>
inline void ScaledSum(int64_t n, T a, const T* __restrict x, T c, const T* __restrict z,
                      T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * (x[i] + c * z[i]);
}

// y += x + a * z + c * w
template <typename T>
inline void AddCombination(int64_t n, const T* __restrict x, T a, const T* __restrict z, T c,
                           const T* __restrict w, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i] + a * z[i] + c * w[i];
}

// y += x + a * z
template <typename T>
inline void AddCombination(int64_t n, const T* __restrict x, T a, const T* __restrict z,
                           T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i] + a * z[i];
}

// y = a * x
template <typename T>
inline void Scaled(int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
}

template <typename T>
inline void ScaleInPlace(int64_t n, T a, T* __restrict x) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
template <typename T>
void Transpose(int64_t rows, int64_t cols, const T* __restrict src, int64_t lds, T* __restrict dst,
               int64_t ldd) {
  constexpr int64_t kB = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kB) {
    const int64_t r1 = std::min(rows, r0 + kB);
    for (int64_t c0 = 0; c0 < cols; c0 += kB) {
      const int64_t c1 = std::min(cols, c0 + kB);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * ldd + r] = src[r * lds + c];
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Register-blocked matrix product on GCC vector extensions. C[R x n] (+)= A[R x (k0..k1)] *
// B[(k0..k1) x n]; rows of A at a + r * lda (column k at index k), rows of B at b + k * ldb.
// The project builds for x86-64-v2 (SSE4.2), so the same body is compiled three times: with
// 16-byte vectors for the baseline, with 32-byte vectors in an AVX2+FMA target function and with
// 64-byte vectors (4 x 4 register tile) in an AVX-512 one; the best the CPU supports is chosen at
// start-up (see GdrVectorLevel). Everything else is plain loops the compiler vectorises.

// One column block [j, j + NB * lanes) of C for R rows: NB * R vector accumulators.
template <typename T, int R, int VB, int NB>
__attribute__((always_inline)) inline void ColumnBlock(int64_t k0, int64_t k1,
                                                       const T* __restrict a, int64_t lda,
                                                       const T* __restrict b, int64_t ldb,
                                                       T* __restrict c, int64_t ldc, int64_t j,
                                                       bool accumulate) {
  typedef T V __attribute__((vector_size(VB)));
  constexpr int L = VB / static_cast<int>(sizeof(T));
  V acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) {
      if (accumulate)
        std::memcpy(&acc[r][x], c + r * ldc + j + x * L, VB);
      else
        acc[r][x] = V{};
    }
  for (int64_t k = k0; k < k1; ++k) {
    V bv[NB];
    for (int x = 0; x < NB; ++x) std::memcpy(&bv[x], b + k * ldb + j + x * L, VB);
    for (int r = 0; r < R; ++r) {
      const T av = a[r * lda + k];
      for (int x = 0; x < NB; ++x) acc[r][x] += av * bv[x];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NB; ++x) std::memcpy(c + r * ldc + j + x * L, &acc[r][x], VB);
}

// Column blocks of NV vectors, then of 2 and 1 vectors, then scalars.
template <typename T, int R, int VB, int NV>
__attribute__((always_inline)) inline void MicroKernelBody(int64_t k0, int64_t k1,
                                                           const T* __restrict a, int64_t lda,
                                                           const T* __restrict b, int64_t ldb,
                                                           T* __restrict c, int64_t ldc, int64_t n,
                                                           bool accumulate) {
  constexpr int L = VB / static_cast<int>(sizeof(T));
  int64_t j = 0;
  for (; j + NV * L <= n; j += NV * L)
    ColumnBlock<T, R, VB, NV>(k0, k1, a, lda, b, ldb, c, ldc, j, accumulate);
  if constexpr (NV > 2)
    for (; j + 2 * L <= n; j += 2 * L)
      ColumnBlock<T, R, VB, 2>(k0, k1, a, lda, b, ldb, c, ldc, j, accumulate);
  for (; j + L <= n; j += L)
    ColumnBlock<T, R, VB, 1>(k0, k1, a, lda, b, ldb, c, ldc, j, accumulate);
  for (; j < n; ++j) {
    T c0[R];
    for (int r = 0; r < R; ++r) c0[r] = accumulate ? c[r * ldc + j] : T(0);
    for (int64_t k = k0; k < k1; ++k) {
      const T bv = b[k * ldb + j];
      for (int r = 0; r < R; ++r) c0[r] += a[r * lda + k] * bv;
    }
    for (int r = 0; r < R; ++r) c[r * ldc + j] = c0[r];
  }
}

template <typename T, int R>
void MicroKernelBase(int64_t k0, int64_t k1, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                     int64_t ldc, int64_t n, bool accumulate) {
  MicroKernelBody<T, R, 16, 2>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define GDN_GDR_HAVE_AVX2_PATH 1
template <typename T, int R>
__attribute__((target("avx2,fma"))) void MicroKernelAvx2(int64_t k0, int64_t k1, const T* a,
                                                         int64_t lda, const T* b, int64_t ldb, T* c,
                                                         int64_t ldc, int64_t n, bool accumulate) {
  MicroKernelBody<T, R, 32, 2>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
}

template <typename T, int R>
__attribute__((target("avx512f,fma"))) void MicroKernelAvx512(int64_t k0, int64_t k1, const T* a,
                                                              int64_t lda, const T* b, int64_t ldb,
                                                              T* c, int64_t ldc, int64_t n,
                                                              bool accumulate) {
  MicroKernelBody<T, R, 64, 4>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
}

int DetectVectorLevel() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
  return __builtin_cpu_supports("avx512f") ? 2 : 1;
}
const int kMaxVectorLevel = DetectVectorLevel();
#else
constexpr int kMaxVectorLevel = 0;
#endif

std::atomic<int> g_vector_level{kMaxVectorLevel};

template <typename T, int R>
inline void MicroKernel(int64_t k0, int64_t k1, const T* a, int64_t lda, const T* b, int64_t ldb,
                        T* c, int64_t ldc, int64_t n, bool accumulate) {
#ifdef GDN_GDR_HAVE_AVX2_PATH
  const int level = g_vector_level.load(std::memory_order_relaxed);
  if (level >= 2 && n >= 64 / static_cast<int64_t>(sizeof(T)))
    return MicroKernelAvx512<T, R>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
  if (level >= 1) return MicroKernelAvx2<T, R>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
#endif
  MicroKernelBase<T, R>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate);
}

constexpr int kMR = 4;  // rows per register block

template <typename T>
inline void MicroKernelRows(int rows, int64_t k0, int64_t k1, const T* a, int64_t lda, const T* b,
                            int64_t ldb, T* c, int64_t ldc, int64_t n, bool accumulate) {
  switch (rows) {
    case 4: MicroKernel<T, 4>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate); break;
    case 3: MicroKernel<T, 3>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate); break;
    case 2: MicroKernel<T, 2>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate); break;
    case 1: MicroKernel<T, 1>(k0, k1, a, lda, b, ldb, c, ldc, n, accumulate); break;
    default: break;
  }
}

// Which part of the product to compute, per block of kMR rows starting at row i0:
//   kFull: everything; kKLower: k < i0 + kMR (A lower triangular incl., its upper part must be 0);
//   kKUpper: k >= i0 (A upper triangular incl., its strictly lower part must be 0);
//   kNLower: columns j < i0 + kMR only, for a lower-triangular result: entries j > i inside the
//   block get the full product, later columns are not written; callers read only j <= i.
enum class Part { kFull, kKLower, kKUpper, kNLower };

// C[m x n] (+)= A[m x kk] * B[kk x n], row-major with leading dimensions.
template <typename T>
void Gemm(int64_t m, int64_t n, int64_t kk, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
          int64_t ldc, bool accumulate, Part part = Part::kFull) {
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int rows = static_cast<int>(std::min<int64_t>(kMR, m - i0));
    int64_t k0 = 0, k1 = kk, nn = n;
    if (part == Part::kKLower) k1 = std::min<int64_t>(kk, i0 + kMR);
    if (part == Part::kKUpper) k0 = std::min<int64_t>(kk, i0);
    if (part == Part::kNLower) nn = std::min<int64_t>(n, i0 + kMR);
    MicroKernelRows<T>(rows, k0, k1, a + i0 * lda, lda, b, ldb, c + i0 * ldc, ldc, nn, accumulate);
  }
}

// ----------------------------------------------------------------------------------------------
// Index helpers.

void CheckShape(const GdrShape& s, int64_t chunk, const char* fn) {
  if (s.B < 0 || s.T < 0 || s.H <= 0 || s.HV <= 0 || s.HV % s.H != 0 || s.dk <= 0 || s.dv <= 0 ||
      chunk <= 0) {
    std::fprintf(stderr,
                 "%s: invalid shape B=%lld T=%lld H=%lld HV=%lld dk=%lld dv=%lld chunk=%lld "
                 "(need HV a multiple of H, positive sizes)\n",
                 fn, static_cast<long long>(s.B), static_cast<long long>(s.T),
                 static_cast<long long>(s.H), static_cast<long long>(s.HV),
                 static_cast<long long>(s.dk), static_cast<long long>(s.dv),
                 static_cast<long long>(chunk));
    std::abort();
  }
}

struct Idx {
  int64_t B, T, H, HV, dk, dv, group;
  explicit Idx(const GdrShape& s)
      : B(s.B), T(s.T), H(s.H), HV(s.HV), dk(s.dk), dv(s.dv), group(s.HV / s.H) {}
  int64_t qk(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * H + h) * dk; }
  int64_t vo(int64_t b, int64_t t, int64_t hv) const { return ((b * T + t) * HV + hv) * dv; }
  int64_t gb(int64_t b, int64_t t, int64_t hv) const { return (b * T + t) * HV + hv; }
  int64_t st(int64_t b, int64_t hv) const { return (b * HV + hv) * dk * dv; }
};

// Threads for a kernel: no more than there are (batch, key head) pairs to share out (a team of
// idle threads only costs barrier time, a lot of it on an oversubscribed machine).
int TeamSize(const Idx& ix) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), ix.B * ix.H)));
}

// Runs body(scratch, b, h) for every batch row b and key head h, shared out over the thread
// team; each thread first makes its own scratch with make_scratch().
template <typename MakeScratch, typename Body>
void ForEachKeyHead(const Idx& ix, MakeScratch make_scratch, Body body) {
#pragma omp parallel num_threads(TeamSize(ix))
  {
    auto scratch = make_scratch();
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < ix.B * ix.H; ++bh) body(scratch, bh / ix.H, bh % ix.H);
  }
}

// ----------------------------------------------------------------------------------------------
// Recurrent (sequential) reference.

template <typename T>
void RecurrentForwardImpl(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                          const T* beta, T scale, const T* s0, T* o, T* s_final) {
  const Idx ix(sh);
  const int64_t dk = ix.dk, dv = ix.dv;
  auto make_scratch = [&] {
    return std::array<std::vector<T>, 3>{std::vector<T>(dk * dv), std::vector<T>(dv),
                                         std::vector<T>(dv)};
  };
  ForEachKeyHead(ix, make_scratch, [&](auto& scratch, int64_t b, int64_t h) {
    auto& [S, ks, u] = scratch;
    for (int64_t hv = h * ix.group; hv < (h + 1) * ix.group; ++hv) {
      if (s0)
        std::copy(s0 + ix.st(b, hv), s0 + ix.st(b, hv) + dk * dv, S.begin());
      else
        std::fill(S.begin(), S.end(), T(0));
      for (int64_t t = 0; t < ix.T; ++t) {
        const T* kt = k + ix.qk(b, t, h);
        const T* qt = q + ix.qk(b, t, h);
        const T* vt = v + ix.vo(b, t, hv);
        const T alpha = std::exp(gamma[ix.gb(b, t, hv)]);
        const T bt = beta[ix.gb(b, t, hv)];
        ScaleInPlace(dk * dv, alpha, S.data());
        std::fill(ks.begin(), ks.end(), T(0));
        for (int64_t d = 0; d < dk; ++d) Axpy(dv, kt[d], S.data() + d * dv, ks.data());
        for (int64_t c = 0; c < dv; ++c) u[c] = bt * (vt[c] - ks[c]);
        T* ot = o + ix.vo(b, t, hv);
        std::fill(ot, ot + dv, T(0));
        for (int64_t d = 0; d < dk; ++d) {
          T* Sd = S.data() + d * dv;
          Axpy(dv, kt[d], u.data(), Sd);
          Axpy(dv, scale * qt[d], Sd, ot);
        }
      }
      if (s_final) std::copy(S.begin(), S.end(), s_final + ix.st(b, hv));
    }
  });
}

template <typename T>
void RecurrentBackwardImpl(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                           const T* beta, T scale, const T* s0, const T* d_o, const T* d_sT, T* dq,
                           T* dk_out, T* dv_out, T* dgamma, T* dbeta, T* d_s0) {
  const Idx ix(sh);
  const int64_t dk = ix.dk, dv = ix.dv, SZ = dk * dv;
  constexpr int64_t kBlock = 64;  // checkpoint every kBlock steps, recompute inside a block
  const int64_t nblocks = (ix.T + kBlock - 1) / kBlock;
  auto make_scratch = [&] {
    return std::array<std::vector<T>, 7>{
        std::vector<T>(std::max<int64_t>(nblocks, 1) * SZ), std::vector<T>((kBlock + 1) * SZ),
        std::vector<T>(SZ), std::vector<T>(kBlock * dv), std::vector<T>(kBlock * dv),
        std::vector<T>(dv), std::vector<T>(dv)};
  };
  ForEachKeyHead(ix, make_scratch, [&](auto& scratch, int64_t b, int64_t h) {
    // rblk and ublk: r_t and u_t of the block's steps
    auto& [ckpt, blk, D, rblk, ublk, ks, du] = scratch;
    for (int64_t t = 0; t < ix.T; ++t) {
      std::fill(dq + ix.qk(b, t, h), dq + ix.qk(b, t, h) + dk, T(0));
      std::fill(dk_out + ix.qk(b, t, h), dk_out + ix.qk(b, t, h) + dk, T(0));
    }
    for (int64_t hv = h * ix.group; hv < (h + 1) * ix.group; ++hv) {
      // One step of the recurrence: Sn = alpha (S - beta k k^T S) + beta k v^T, with
      // r = v - alpha S^T k and u = beta r.
      auto step = [&](int64_t t, const T* S, T* Sn, T* r, T* u) {
        const T* kt = k + ix.qk(b, t, h);
        const T* vt = v + ix.vo(b, t, hv);
        const T alpha = std::exp(gamma[ix.gb(b, t, hv)]);
        const T bt = beta[ix.gb(b, t, hv)];
        std::fill(ks.begin(), ks.end(), T(0));
        for (int64_t d = 0; d < dk; ++d) Axpy(dv, kt[d], S + d * dv, ks.data());
        for (int64_t c = 0; c < dv; ++c) {
          r[c] = vt[c] - alpha * ks[c];
          u[c] = bt * r[c];
        }
        for (int64_t d = 0; d < dk; ++d)
          for (int64_t c = 0; c < dv; ++c) Sn[d * dv + c] = alpha * S[d * dv + c] + kt[d] * u[c];
      };
      // Forward pass storing checkpoints at block starts.
      T* S = blk.data();
      if (s0)
        std::copy(s0 + ix.st(b, hv), s0 + ix.st(b, hv) + SZ, S);
      else
        std::fill(S, S + SZ, T(0));
      for (int64_t t = 0; t < ix.T; ++t) {
        if (t % kBlock == 0) std::copy(S, S + SZ, ckpt.data() + (t / kBlock) * SZ);
        T* Sn = blk.data() + SZ;
        step(t, S, Sn, rblk.data(), ublk.data());
        std::copy(Sn, Sn + SZ, S);
      }
      if (d_sT)
        std::copy(d_sT + ix.st(b, hv), d_sT + ix.st(b, hv) + SZ, D.begin());
      else
        std::fill(D.begin(), D.end(), T(0));
      for (int64_t bl = nblocks - 1; bl >= 0; --bl) {
        const int64_t t0 = bl * kBlock, len = std::min(kBlock, ix.T - t0);
        std::copy(ckpt.data() + bl * SZ, ckpt.data() + (bl + 1) * SZ, blk.data());
        for (int64_t l = 0; l < len; ++l)
          step(t0 + l, blk.data() + l * SZ, blk.data() + (l + 1) * SZ, rblk.data() + l * dv,
               ublk.data() + l * dv);
        for (int64_t l = len - 1; l >= 0; --l) {
          const int64_t t = t0 + l;
          const T* Sp = blk.data() + l * SZ;        // S_{t-1}
          const T* St = blk.data() + (l + 1) * SZ;  // S_t
          const T* r = rblk.data() + l * dv;
          const T* u = ublk.data() + l * dv;
          const T* kt = k + ix.qk(b, t, h);
          const T* qt = q + ix.qk(b, t, h);
          const T* dot = d_o + ix.vo(b, t, hv);
          const T alpha = std::exp(gamma[ix.gb(b, t, hv)]);
          const T bt = beta[ix.gb(b, t, hv)];
          T* dqt = dq + ix.qk(b, t, h);
          T* dkt = dk_out + ix.qk(b, t, h);
          // D += s q do^T ; dq = s S_t do
          for (int64_t d = 0; d < dk; ++d) {
            Axpy(dv, scale * qt[d], dot, D.data() + d * dv);
            dqt[d] += scale * Dot(dv, St + d * dv, dot);
          }
          // dk = D u ; du = D^T k
          std::fill(du.begin(), du.end(), T(0));
          for (int64_t d = 0; d < dk; ++d) {
            dkt[d] += Dot(dv, D.data() + d * dv, u);
            Axpy(dv, kt[d], D.data() + d * dv, du.data());
          }
          T* dvt = dv_out + ix.vo(b, t, hv);
          for (int64_t c = 0; c < dv; ++c) dvt[c] = bt * du[c];
          dbeta[ix.gb(b, t, hv)] = Dot(dv, du.data(), r);
          // dk += -beta S~ du (S~ = alpha S_{t-1}) ; dS~ = D - beta k du^T ;
          // dalpha = <dS~, S_{t-1}>
          T dalpha = 0;
          for (int64_t d = 0; d < dk; ++d) {
            dkt[d] -= bt * alpha * Dot(dv, Sp + d * dv, du.data());
            T* Dd = D.data() + d * dv;
            Axpy(dv, -bt * kt[d], du.data(), Dd);
            dalpha += Dot(dv, Dd, Sp + d * dv);
          }
          dgamma[ix.gb(b, t, hv)] = alpha * dalpha;
          ScaleInPlace(SZ, alpha, D.data());
        }
      }
      if (d_s0) std::copy(D.begin(), D.end(), d_s0 + ix.st(b, hv));
    }
  });
}

// ----------------------------------------------------------------------------------------------
// Chunked form.

// Per-thread scratch kept across calls (grown on demand), so that a call does not pay for fresh
// pages; Arena carves it into buffers (a first pass with a null base only measures).
template <typename T>
T* ThreadScratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(n);
  }
  return buf.data();
}

template <typename T>
class Arena {
 public:
  explicit Arena(T* base) : base_(base) {}
  T* Take(int64_t n) {
    T* p = base_ ? base_ + used_ : nullptr;
    used_ += (n + 15) / 16 * 16;
    return p;
  }
  int64_t used() const { return used_; }

 private:
  T* base_;
  int64_t used_ = 0;
};

// A make_scratch for ForEachKeyHead: each thread's buffers carved by `carve` (Arena<T>& -> its
// buffers) from its ThreadScratch, sized by a dry run.
template <typename T, typename Carve>
auto CarvedScratch(Carve carve) {
  Arena<T> sizer(nullptr);
  carve(sizer);
  const int64_t n = sizer.used();
  return [carve, n] {
    Arena<T> arena(ThreadScratch<T>(n));
    return carve(arena);
  };
}

// Buffers and steps shared by the chunked forward and backward, for one chunk of L <= C tokens.
template <typename T>
struct ChunkWork {
  int64_t C, dk, dv, L = 0;
  T* qk;                        // [2L, dk]: Q rows then K rows
  T* qkt;                       // [dk, 2L]: its transpose
  T* vc;                        // [L, dv]
  T *g, *bt, *alpha, *gam, *e;  // [L]
  T *E, *QK, *KK, *P, *Mn;      // [L, L] with ld C
  T* qsks;                      // [2L, dv]: Q S rows then K S rows
  T *R, *Vp, *o;                // [L, dv]

  ChunkWork(int64_t C_, int64_t dk_, int64_t dv_, Arena<T>& a) : C(C_), dk(dk_), dv(dv_) {
    qk = a.Take(2 * C * dk);
    qkt = a.Take(2 * C * dk);
    vc = a.Take(C * dv);
    g = a.Take(C), bt = a.Take(C), alpha = a.Take(C), gam = a.Take(C), e = a.Take(C);
    E = a.Take(C * C), QK = a.Take(C * C), KK = a.Take(C * C), P = a.Take(C * C);
    Mn = a.Take(C * C);
    qsks = a.Take(2 * C * dv);
    R = a.Take(C * dv), Vp = a.Take(C * dv), o = a.Take(C * dv);
  }

  const T* Qc() const { return qk; }
  const T* Kc() const { return qk + L * dk; }
  const T* Kt() const { return qkt + L; }  // [dk, L] with ld 2L
  T* QS() { return qsks; }
  T* KS() { return qsks + L * dv; }

  // Gathers the chunk [t0, t0 + len) of (b, h, hv).
  void Gather(const Idx& ix, int64_t b, int64_t h, int64_t hv, int64_t t0, int64_t len, const T* q,
              const T* k, const T* v, const T* gamma, const T* beta) {
    L = len;
    for (int64_t i = 0; i < L; ++i) {
      std::memcpy(qk + i * dk, q + ix.qk(b, t0 + i, h), dk * sizeof(T));
      std::memcpy(qk + (L + i) * dk, k + ix.qk(b, t0 + i, h), dk * sizeof(T));
      std::memcpy(vc + i * dv, v + ix.vo(b, t0 + i, hv), dv * sizeof(T));
      g[i] = gamma[ix.gb(b, t0 + i, hv)];
      bt[i] = beta[ix.gb(b, t0 + i, hv)];
    }
    Transpose(2 * L, dk, qk, dk, qkt, 2 * L);
  }

  // State-independent chunk quantities: decays, E, K K^T, Mn = -M, and (with_q) Q K^T, P.
  void Prepare(bool with_q) {
    // Gam_i = exp(G_i), e_i = exp(sum_{m>i} g_m), and E_ij = exp(G_i - G_j) for i >= j as the
    // running product alpha_i E_{i-1,j} (alpha = exp(gamma) <= 1: one exp per token, every factor
    // <= 1, no overflow; at most i - j roundings). Nothing is ever divided by a decay.
    T acc = 0;
    for (int64_t i = 0; i < L; ++i) {
      acc += g[i];
      gam[i] = std::exp(acc);
      alpha[i] = std::exp(g[i]);
    }
    acc = 0;
    for (int64_t i = L - 1; i >= 0; --i) {
      e[i] = std::exp(acc);
      acc += g[i];
    }
    for (int64_t i = 0; i < L; ++i) {
      T* Ei = E + i * C;
      const T* Ep = E + (i - 1) * C;
      const T ai = alpha[i];
      for (int64_t j = 0; j < i; ++j) Ei[j] = ai * Ep[j];
      Ei[i] = 1;
      for (int64_t j = i + 1; j < L; ++j) Ei[j] = 0;
    }
    // KK = K K^T (lower part), Mn = -M.
    Gemm<T>(L, L, dk, Kc(), dk, Kt(), 2 * L, KK, C, false, Part::kNLower);
    for (int64_t i = 0; i < L; ++i) {
      T* Mi = Mn + i * C;
      const T* Ki = KK + i * C;
      const T* Ei = E + i * C;
      const T nb = -bt[i];
      for (int64_t j = 0; j < i; ++j) Mi[j] = nb * Ki[j] * Ei[j];
      for (int64_t j = i; j < L; ++j) Mi[j] = 0;
    }
    if (with_q) {
      Gemm<T>(L, L, dk, Qc(), dk, Kt(), 2 * L, QK, C, false, Part::kNLower);
      for (int64_t i = 0; i < L; ++i) {
        T* Pi = P + i * C;
        const T* Qi = QK + i * C;
        const T* Ei = E + i * C;
        for (int64_t j = 0; j <= i; ++j) Pi[j] = Qi[j] * Ei[j];
        for (int64_t j = i + 1; j < L; ++j) Pi[j] = 0;
      }
    }
  }

  // Given KS (= K S), computes R = V - diag(Gam) K S and V' = (I + M)^-1 diag(beta) R.
  void SolveVp() {
    const T* ks = KS();
    for (int64_t i = 0; i < L; ++i) {
      T* Ri = R + i * dv;
      T* Vi = Vp + i * dv;
      const T* vi = vc + i * dv;
      const T* ki = ks + i * dv;
      const T gi = gam[i], bi = bt[i];
      for (int64_t c = 0; c < dv; ++c) {
        Ri[c] = vi[c] - gi * ki[c];
        Vi[c] = bi * Ri[c];
      }
    }
    // Forward substitution, blocked: V'_i += sum_{j<i} Mn_ij V'_j.
    for (int64_t i0 = 0; i0 < L; i0 += kMR) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, L - i0));
      MicroKernelRows<T>(rows, 0, i0, Mn + i0 * C, C, Vp, dv, Vp + i0 * dv, dv, dv, true);
      for (int64_t i = i0; i < i0 + rows; ++i)
        for (int64_t j = i0; j < i; ++j) Axpy(dv, Mn[i * C + j], Vp + j * dv, Vp + i * dv);
    }
  }

  // S <- Gam_{L-1} S + K^T diag(e) V'. Uses o as scratch.
  void AdvanceState(T* S) {
    for (int64_t i = 0; i < L; ++i) {
      const T ei = e[i];
      const T* Vi = Vp + i * dv;
      T* wi = o + i * dv;
      for (int64_t c = 0; c < dv; ++c) wi[c] = ei * Vi[c];
    }
    ScaleInPlace(dk * dv, gam[L - 1], S);
    Gemm<T>(dk, dv, L, Kt(), 2 * L, o, dv, S, dv, true);
  }
};

template <typename T>
void ChunkedForwardImpl(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                        const T* gamma, const T* beta, T scale, const T* s0, T* o, T* s_final) {
  const Idx ix(sh);
  const int64_t dk = ix.dk, dv = ix.dv, SZ = dk * dv;
  const int64_t C = std::max<int64_t>(1, std::min<int64_t>(chunk, std::max<int64_t>(ix.T, 1)));
  auto carve = [&](Arena<T>& a) {
    ChunkWork<T> w(C, dk, dv, a);
    T* S = a.Take(SZ);
    return std::make_pair(w, S);
  };
  ForEachKeyHead(ix, CarvedScratch<T>(carve), [&](auto& scratch, int64_t b, int64_t h) {
    auto& [w, S] = scratch;
    for (int64_t hv = h * ix.group; hv < (h + 1) * ix.group; ++hv) {
      if (s0)
        std::memcpy(S, s0 + ix.st(b, hv), SZ * sizeof(T));
      else
        std::fill(S, S + SZ, T(0));
      for (int64_t t0 = 0; t0 < ix.T; t0 += C) {
        const int64_t L = std::min(C, ix.T - t0);
        w.Gather(ix, b, h, hv, t0, L, q, k, v, gamma, beta);
        w.Prepare(true);
        // [Q; K] S in one product.
        Gemm<T>(2 * L, dv, dk, w.qk, dk, S, dv, w.qsks, dv, false);
        w.SolveVp();
        // O = s (diag(Gam) Q S + P V').
        Gemm<T>(L, dv, L, w.P, C, w.Vp, dv, w.o, dv, false, Part::kKLower);
        for (int64_t i = 0; i < L; ++i)
          ScaledSum(dv, scale, w.o + i * dv, w.gam[i], w.QS() + i * dv, o + ix.vo(b, t0 + i, hv));
        w.AdvanceState(S);
      }
      if (s_final) std::memcpy(s_final + ix.st(b, hv), S, SZ * sizeof(T));
    }
  });
}

template <typename T>
void ChunkedBackwardImpl(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                         const T* gamma, const T* beta, T scale, const T* s0, const T* d_o,
                         const T* d_sT, T* dq, T* dk_out, T* dv_out, T* dgamma, T* dbeta, T* d_s0) {
  const Idx ix(sh);
  const int64_t dk = ix.dk, dv = ix.dv, SZ = dk * dv;
  const int64_t C = std::max<int64_t>(1, std::min<int64_t>(chunk, std::max<int64_t>(ix.T, 1)));
  const int64_t nchunks = (ix.T + C - 1) / C;
  struct Bufs {
    T *states, *Vpall;  // per chunk: start state [dk, dv]; V' for every token [T, dv]
    T *S, *D, *St, *Dt;
    T *doy, *wts;  // [2C, dv]: [dO; Y] and [s Gam dO; -Gam beta Y]
    T *kd, *dvp, *vpt;
    T *x12, *x3, *dqc, *dkc;
    T *Pt, *dP, *dM, *tmp;
    T *dG, *de, *dbt;
  };
  auto carve = [&](Arena<T>& a) {
    ChunkWork<T> w(C, dk, dv, a);
    Bufs u;
    u.states = a.Take(std::max<int64_t>(1, nchunks) * SZ);
    u.Vpall = a.Take(std::max<int64_t>(1, ix.T) * dv);
    u.S = a.Take(SZ), u.D = a.Take(SZ), u.St = a.Take(SZ), u.Dt = a.Take(SZ);
    u.doy = a.Take(2 * C * dv), u.wts = a.Take(2 * C * dv);
    u.kd = a.Take(C * dv), u.dvp = a.Take(C * dv), u.vpt = a.Take(C * dv);
    u.x12 = a.Take(2 * C * dk), u.x3 = a.Take(C * dk), u.dqc = a.Take(C * dk);
    u.dkc = a.Take(C * dk);
    u.Pt = a.Take(C * C), u.dP = a.Take(C * C), u.dM = a.Take(C * C), u.tmp = a.Take(C * C);
    u.dG = a.Take(C), u.de = a.Take(C), u.dbt = a.Take(C);
    return std::make_pair(w, u);
  };
  ForEachKeyHead(ix, CarvedScratch<T>(carve), [&](auto& scratch, int64_t b, int64_t h) {
    auto& [w, u] = scratch;
    T* const S = u.S;
    T* const D = u.D;
    for (int64_t t = 0; t < ix.T; ++t) {
      std::fill(dq + ix.qk(b, t, h), dq + ix.qk(b, t, h) + dk, T(0));
      std::fill(dk_out + ix.qk(b, t, h), dk_out + ix.qk(b, t, h) + dk, T(0));
    }
    for (int64_t hv = h * ix.group; hv < (h + 1) * ix.group; ++hv) {
      // Forward sweep: chunk-start states and V' of every chunk.
      if (s0)
        std::memcpy(S, s0 + ix.st(b, hv), SZ * sizeof(T));
      else
        std::fill(S, S + SZ, T(0));
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t t0 = c * C, L = std::min(C, ix.T - t0);
        std::memcpy(u.states + c * SZ, S, SZ * sizeof(T));
        w.Gather(ix, b, h, hv, t0, L, q, k, v, gamma, beta);
        w.Prepare(false);
        Gemm<T>(L, dv, dk, w.Kc(), dk, S, dv, w.KS(), dv, false);
        w.SolveVp();
        std::memcpy(u.Vpall + t0 * dv, w.Vp, L * dv * sizeof(T));
        w.AdvanceState(S);
      }
      if (d_sT)
        std::memcpy(D, d_sT + ix.st(b, hv), SZ * sizeof(T));
      else
        std::fill(D, D + SZ, T(0));
      // Reverse sweep carrying D = dL/dS at the end of the current chunk.
      for (int64_t c = nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * C, L = std::min(C, ix.T - t0);
        const T* Sc = u.states + c * SZ;
        w.Gather(ix, b, h, hv, t0, L, q, k, v, gamma, beta);
        w.Prepare(true);
        const T* Vp = u.Vpall + t0 * dv;
        const T* Kc = w.Kc();
        const T* Qc = w.Qc();
        const T* E = w.E;
        const T gamL = w.gam[L - 1];
        T* dO = u.doy;
        T* Y = u.doy + L * dv;
        for (int64_t i = 0; i < L; ++i)
          std::memcpy(dO + i * dv, d_o + ix.vo(b, t0 + i, hv), dv * sizeof(T));

        // K D and <D, S>, before D is updated.
        Gemm<T>(L, dv, dk, Kc, dk, D, dv, u.kd, dv, false);
        const T DS = Dot(SZ, D, Sc);
        // dV' = s P^T dO + diag(e) K D ; de_i = (K D)_i . V'_i.
        Transpose(L, L, w.P, C, u.Pt, C);
        Gemm<T>(L, dv, L, u.Pt, C, dO, dv, u.dvp, dv, false, Part::kKUpper);
        for (int64_t i = 0; i < L; ++i) {
          T* di = u.dvp + i * dv;
          const T* ki = u.kd + i * dv;
          const T ei = w.e[i];
          for (int64_t cc = 0; cc < dv; ++cc) di[cc] = scale * di[cc] + ei * ki[cc];
          u.de[i] = Dot(dv, ki, Vp + i * dv);
        }
        // Y = (I + M)^-T dV': back substitution Y_j = dV'_j + sum_{i>j} Mn_ij Y_i, blocked
        // from the bottom (tmp = Mn^T).
        std::memcpy(Y, u.dvp, L * dv * sizeof(T));
        Transpose(L, L, w.Mn, C, u.tmp, C);
        for (int64_t i0 = (L - 1) / kMR * kMR; i0 >= 0; i0 -= kMR) {
          const int rows = static_cast<int>(std::min<int64_t>(kMR, L - i0));
          MicroKernelRows<T>(rows, i0 + rows, L, u.tmp + i0 * C, C, Y, dv, Y + i0 * dv, dv, dv,
                             true);
          for (int64_t j = i0 + rows - 1; j >= i0; --j)
            for (int64_t i = j + 1; i < i0 + rows; ++i)
              Axpy(dv, u.tmp[j * C + i], Y + i * dv, Y + j * dv);
        }
        // X1 = dO S^T, X2 = Y S^T (rows of x12), X3 = V' D^T.
        Transpose(dk, dv, Sc, dv, u.St, dk);
        Transpose(dk, dv, D, dv, u.Dt, dk);
        Gemm<T>(2 * L, dk, dv, u.doy, dv, u.St, dk, u.x12, dk, false);
        Gemm<T>(L, dk, dv, Vp, dv, u.Dt, dk, u.x3, dk, false);
        const T* X1 = u.x12;
        const T* X2 = u.x12 + L * dk;
        // dP = s dO V'^T (i >= j), dM = -Y V'^T (i > j); then dQK = dP * E (in dP),
        // dA = dM * beta_i E (in dM), the E terms of dG and the M term of dbeta.
        Transpose(L, dv, Vp, dv, u.vpt, L);
        Gemm<T>(L, L, dv, dO, dv, u.vpt, L, u.dP, C, false, Part::kNLower);
        Gemm<T>(L, L, dv, Y, dv, u.vpt, L, u.dM, C, false, Part::kNLower);
        T* dG = u.dG;
        std::fill(dG, dG + L, T(0));
        for (int64_t i = 0; i < L; ++i) {
          const T* Ei = E + i * C;
          const T* QKi = w.QK + i * C;
          const T* KKi = w.KK + i * C;
          T* dPi = u.dP + i * C;
          T* dMi = u.dM + i * C;
          const T bi = w.bt[i];
          T db = 0, dgi = 0;
          for (int64_t j = 0; j < i; ++j) {
            const T dp = scale * dPi[j];
            const T dm = -dMi[j];
            const T wgt = (dp * QKi[j] + dm * bi * KKi[j]) * Ei[j];  // dE_ij E_ij
            db += dm * KKi[j] * Ei[j];
            dgi += wgt;
            dG[j] -= wgt;
            dPi[j] = dp * Ei[j];
            dMi[j] = dm * bi * Ei[j];
          }
          dPi[i] = scale * dPi[i];  // E_ii = 1 carries no gamma dependence
          dMi[i] = 0;
          for (int64_t j = i + 1; j < L; ++j) dPi[j] = dMi[j] = 0;
          dG[i] += dgi;
          u.dbt[i] = db;
        }
        // Per token: dv, dbeta, the Gam and e terms of dG.
        for (int64_t i = 0; i < L; ++i) {
          const T* Yi = Y + i * dv;
          const T bi = w.bt[i], gi = w.gam[i];
          Scaled(dv, bi, Yi, dv_out + ix.vo(b, t0 + i, hv));
          const T kx2 = Dot(dk, Kc + i * dk, X2 + i * dk);  // (K S)_i . Y_i
          // dbeta_i += R_i . Y_i with R_i = v_i - Gam_i (K S)_i.
          u.dbt[i] += Dot(dv, w.vc + i * dv, Yi) - gi * kx2;
          // dGam_i = s (Q S)_i . dO_i - beta_i (K S)_i . Y_i.
          const T dGam = scale * Dot(dk, Qc + i * dk, X1 + i * dk) - bi * kx2;
          dG[i] += dGam * gi;
          if (i < L - 1) {  // e_{L-1} = 1 carries no gamma dependence (and would cancel)
            const T dee = u.de[i] * w.e[i];
            dG[L - 1] += dee;
            dG[i] -= dee;
          }
        }
        dG[L - 1] += DS * gamL;
        {
          T acc = 0;
          for (int64_t i = L - 1; i >= 0; --i) {
            acc += dG[i];
            dgamma[ix.gb(b, t0 + i, hv)] = acc;
            dbeta[ix.gb(b, t0 + i, hv)] = u.dbt[i];
          }
        }
        // dQ = dQK K + s diag(Gam) X1 ;
        // dK = dQK^T Q + (dA + dA^T) K + diag(e) X3 - diag(Gam beta) X2.
        Gemm<T>(L, dk, L, u.dP, C, Kc, dk, u.dqc, dk, false, Part::kKLower);
        Transpose(L, L, u.dP, C, u.tmp, C);
        Gemm<T>(L, dk, L, u.tmp, C, Qc, dk, u.dkc, dk, false, Part::kKUpper);
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < i; ++j) u.dM[j * C + i] = u.dM[i * C + j];
        Gemm<T>(L, dk, L, u.dM, C, Kc, dk, u.dkc, dk, true);
        for (int64_t i = 0; i < L; ++i) {
          const T sg = scale * w.gam[i], gb = w.gam[i] * w.bt[i];
          AddCombination(dk, u.dqc + i * dk, sg, X1 + i * dk, dq + ix.qk(b, t0 + i, h));
          AddCombination(dk, u.dkc + i * dk, w.e[i], u.x3 + i * dk, -gb, X2 + i * dk,
                         dk_out + ix.qk(b, t0 + i, h));
        }
        // D <- Gam_{L-1} D + Q^T (s Gam dO) + K^T (-Gam beta Y).
        for (int64_t i = 0; i < L; ++i) {
          const T a1 = scale * w.gam[i], a2 = -w.gam[i] * w.bt[i];
          const T* dOi = dO + i * dv;
          const T* Yi = Y + i * dv;
          T* w1 = u.wts + i * dv;
          T* w2 = u.wts + (L + i) * dv;
          for (int64_t cc = 0; cc < dv; ++cc) {
            w1[cc] = a1 * dOi[cc];
            w2[cc] = a2 * Yi[cc];
          }
        }
        ScaleInPlace(SZ, gamL, D);
        Gemm<T>(dk, dv, 2 * L, w.qkt, 2 * L, u.wts, dv, D, dv, true);
      }
      if (d_s0) std::memcpy(d_s0 + ix.st(b, hv), D, SZ * sizeof(T));
    }
  });
}

}  // namespace

namespace gdr_internal {
int GdrVectorLevel() { return g_vector_level.load(); }
int GdrSetVectorLevelForTesting(int level) {
  g_vector_level.store(std::clamp(level, 0, kMaxVectorLevel));
  return g_vector_level.load();
}
}  // namespace gdr_internal

template <typename T>
void GdrRecurrentForward(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                         const T* beta, T scale, const T* initial_state, T* o, T* final_state) {
  CheckShape(sh, 1, "GdrRecurrentForward");
  RecurrentForwardImpl<T>(sh, q, k, v, gamma, beta, scale, initial_state, o, final_state);
}

template <typename T>
void GdrRecurrentBackward(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                          const T* beta, T scale, const T* initial_state, const T* d_o,
                          const T* d_final_state, T* dq, T* dk, T* dv, T* dgamma, T* dbeta,
                          T* d_initial_state) {
  CheckShape(sh, 1, "GdrRecurrentBackward");
  RecurrentBackwardImpl<T>(sh, q, k, v, gamma, beta, scale, initial_state, d_o, d_final_state, dq,
                           dk, dv, dgamma, dbeta, d_initial_state);
}

template <typename T>
void GdrChunkedForward(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                       const T* gamma, const T* beta, T scale, const T* initial_state, T* o,
                       T* final_state) {
  CheckShape(sh, chunk, "GdrChunkedForward");
  ChunkedForwardImpl<T>(sh, chunk, q, k, v, gamma, beta, scale, initial_state, o, final_state);
}

template <typename T>
void GdrChunkedBackward(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                        const T* gamma, const T* beta, T scale, const T* initial_state,
                        const T* d_o, const T* d_final_state, T* dq, T* dk, T* dv, T* dgamma,
                        T* dbeta, T* d_initial_state) {
  CheckShape(sh, chunk, "GdrChunkedBackward");
  ChunkedBackwardImpl<T>(sh, chunk, q, k, v, gamma, beta, scale, initial_state, d_o, d_final_state,
                         dq, dk, dv, dgamma, dbeta, d_initial_state);
}

#define GDN_GDR_INSTANTIATE(T)                                                                     \
  template void GdrRecurrentForward<T>(const GdrShape&, const T*, const T*, const T*, const T*,    \
                                       const T*, T, const T*, T*, T*);                             \
  template void GdrRecurrentBackward<T>(const GdrShape&, const T*, const T*, const T*, const T*,   \
                                        const T*, T, const T*, const T*, const T*, T*, T*, T*, T*, \
                                        T*, T*);                                                   \
  template void GdrChunkedForward<T>(const GdrShape&, int64_t, const T*, const T*, const T*,       \
                                     const T*, const T*, T, const T*, T*, T*);                     \
  template void GdrChunkedBackward<T>(const GdrShape&, int64_t, const T*, const T*, const T*,      \
                                      const T*, const T*, T, const T*, const T*, const T*, T*, T*, \
                                      T*, T*, T*, T*);

GDN_GDR_INSTANTIATE(float)
GDN_GDR_INSTANTIATE(double)
#undef GDN_GDR_INSTANTIATE

}  // namespace gdn::cpu
