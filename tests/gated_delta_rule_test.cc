// Tests of the CPU gated delta rule kernels (kernels/cpu/gated_delta_rule.h):
//   1. chunked forward == recurrent forward (outputs and final state), double and float;
//   2. recurrent backward == central finite differences (double) of
//      L = sum(o * R1) + sum(S_T * R2), for every input;
//   3. chunked backward == recurrent backward, double and float;
//   4. no NaN / inf in any regime;
// plus thread-count determinism, null-pointer contracts and a timing printout (no assertion).
// Relative error: max|a - b| / max(max|b|, tiny).
#include "kernels/cpu/gated_delta_rule.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace gdn::cpu {
namespace {

enum class Gate { kLogSigmoid, kZero, kStrong, kMixed };

struct Case {
  std::string name;
  GdrShape sh;
  int64_t chunk;
  Gate gate;
  double beta_max;  // beta in (0, beta_max): 1, or 2 for the negative-eigenvalue option
  bool init_state;  // nonzero initial state (else nullptr)
  bool d_final;     // nonzero dL/dS_T (else nullptr)
};

// The regimes exercised by tests 1, 3 and 4.
std::vector<Case> AllCases() {
  return {
      {"base_T100_C32", {2, 100, 2, 2, 16, 16}, 32, Gate::kLogSigmoid, 1.0, true, true},
      {"base_T100_C64", {2, 100, 2, 2, 16, 16}, 64, Gate::kLogSigmoid, 1.0, true, true},
      {"grouped_dk8_dv16", {2, 100, 2, 4, 8, 16}, 32, Gate::kLogSigmoid, 1.0, true, true},
      {"gate_one", {1, 100, 2, 4, 8, 16}, 64, Gate::kZero, 1.0, true, true},
      {"gate_one_beta2", {1, 100, 2, 2, 16, 16}, 32, Gate::kZero, 2.0, true, true},
      {"strong_decay", {1, 100, 2, 4, 8, 16}, 32, Gate::kStrong, 1.0, true, true},
      {"strong_decay_C64", {1, 100, 2, 2, 16, 16}, 64, Gate::kStrong, 1.0, true, true},
      {"mixed_gates", {2, 100, 2, 4, 8, 16}, 32, Gate::kMixed, 1.0, true, true},
      {"mixed_gates_beta2", {1, 100, 1, 2, 16, 16}, 64, Gate::kMixed, 2.0, true, true},
      {"beta2", {2, 100, 2, 2, 8, 16}, 32, Gate::kLogSigmoid, 2.0, true, true},
      {"T1", {2, 1, 2, 4, 8, 16}, 64, Gate::kLogSigmoid, 1.0, true, true},
      {"T1_C32_beta2", {1, 1, 1, 1, 16, 16}, 32, Gate::kMixed, 2.0, true, true},
      {"T_multiple_of_C", {1, 128, 2, 2, 16, 8}, 64, Gate::kLogSigmoid, 1.0, true, true},
      {"odd_dims_C7", {1, 45, 1, 3, 6, 10}, 7, Gate::kLogSigmoid, 1.0, true, true},
      {"chunk1", {1, 20, 1, 1, 8, 16}, 1, Gate::kMixed, 1.0, true, true},
      {"no_init_no_dfinal", {2, 70, 2, 4, 8, 16}, 32, Gate::kLogSigmoid, 1.0, false, false},
      {"longer_dk32_dv64", {1, 200, 1, 2, 32, 64}, 64, Gate::kLogSigmoid, 1.0, true, true},
  };
}

template <typename T>
struct Problem {
  GdrShape sh;
  T scale;
  std::vector<T> q, k, v, g, b, s0, r1, r2;  // r1 = d_o, r2 = dL/dS_T
  bool init_state, d_final;
  const T* S0() const { return init_state ? s0.data() : nullptr; }
  const T* DST() const { return d_final ? r2.data() : nullptr; }
};

double LogSigmoid(double x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

Problem<double> MakeProblem(const GdrShape& sh, Gate gate, double beta_max, bool init_state,
                            bool d_final, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  Problem<double> p;
  p.sh = sh;
  p.scale = 1.0 / std::sqrt(static_cast<double>(sh.dk));
  p.init_state = init_state;
  p.d_final = d_final;
  const int64_t nqk = sh.B * sh.T * sh.H * sh.dk, nv = sh.B * sh.T * sh.HV * sh.dv;
  const int64_t ng = sh.B * sh.T * sh.HV, ns = sh.B * sh.HV * sh.dk * sh.dv;
  auto normal = [&](int64_t n) {
    std::vector<double> x(n);
    for (auto& e : x) e = nd(rng);
    return x;
  };
  auto l2 = [&](std::vector<double>& x) {
    for (int64_t i = 0; i < nqk; i += sh.dk) {
      double n2 = 0;
      for (int64_t d = 0; d < sh.dk; ++d) n2 += x[i + d] * x[i + d];
      const double inv = 1.0 / std::sqrt(n2 + 1e-6);
      for (int64_t d = 0; d < sh.dk; ++d) x[i + d] *= inv;
    }
  };
  p.q = normal(nqk);
  p.k = normal(nqk);
  l2(p.q);
  l2(p.k);
  p.v = normal(nv);
  p.b.resize(ng);
  for (auto& e : p.b) e = beta_max / (1.0 + std::exp(-nd(rng)));
  p.g.resize(ng);
  for (auto& e : p.g) {
    switch (gate) {
      case Gate::kLogSigmoid: e = LogSigmoid(nd(rng) + 1.0); break;
      case Gate::kZero: e = 0.0; break;
      case Gate::kStrong: e = -30.0 - ud(rng); break;
      case Gate::kMixed: {
        const double u = ud(rng);
        e = u < 0.35 ? 0.0 : (u < 0.6 ? -30.0 : LogSigmoid(nd(rng) + 1.0));
        break;
      }
    }
  }
  p.s0 = normal(ns);
  for (auto& e : p.s0) e *= 0.5;
  p.r1 = normal(nv);
  p.r2 = normal(ns);
  return p;
}

template <typename T>
Problem<T> Cast(const Problem<double>& p) {
  Problem<T> r;
  r.sh = p.sh;
  r.scale = static_cast<T>(p.scale);
  r.init_state = p.init_state;
  r.d_final = p.d_final;
  auto c = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  r.q = c(p.q), r.k = c(p.k), r.v = c(p.v), r.g = c(p.g), r.b = c(p.b), r.s0 = c(p.s0);
  r.r1 = c(p.r1), r.r2 = c(p.r2);
  return r;
}

template <typename T>
double MaxAbs(const std::vector<T>& x) {
  double m = 0;
  for (T e : x) m = std::max(m, std::abs(static_cast<double>(e)));
  return m;
}

// max|a - b| / max(max|b|, tiny)
template <typename T>
double RelErr(const std::vector<T>& a, const std::vector<T>& b, double tiny = 1e-300) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m / std::max(MaxAbs(b), tiny);
}

template <typename T>
bool AllFinite(const std::vector<T>& x) {
  for (T e : x)
    if (!std::isfinite(e)) return false;
  return true;
}

template <typename T>
struct Fwd {
  std::vector<T> o, sT;
};

template <typename T>
Fwd<T> RunForward(const Problem<T>& p, bool chunked, int64_t chunk) {
  const auto& sh = p.sh;
  Fwd<T> f;
  f.o.assign(sh.B * sh.T * sh.HV * sh.dv, std::numeric_limits<T>::quiet_NaN());
  f.sT.assign(sh.B * sh.HV * sh.dk * sh.dv, std::numeric_limits<T>::quiet_NaN());
  if (chunked)
    GdrChunkedForward<T>(sh, chunk, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                         p.scale, p.S0(), f.o.data(), f.sT.data());
  else
    GdrRecurrentForward<T>(sh, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(), p.scale,
                           p.S0(), f.o.data(), f.sT.data());
  return f;
}

template <typename T>
struct Grads {
  std::vector<T> dq, dk, dv, dg, db, ds0;
  static constexpr const char* kNames[6] = {"dq", "dk", "dv", "dgamma", "dbeta", "d_initial_state"};
  std::vector<T>* at(int i) {
    std::vector<T>* a[6] = {&dq, &dk, &dv, &dg, &db, &ds0};
    return a[i];
  }
};

// Gradient outputs are pre-filled with NaN: the kernels must overwrite them.
template <typename T>
Grads<T> RunBackward(const Problem<T>& p, bool chunked, int64_t chunk) {
  const auto& sh = p.sh;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  Grads<T> g;
  g.dq.assign(p.q.size(), nan);
  g.dk.assign(p.k.size(), nan);
  g.dv.assign(p.v.size(), nan);
  g.dg.assign(p.g.size(), nan);
  g.db.assign(p.b.size(), nan);
  g.ds0.assign(p.s0.size(), nan);
  if (chunked)
    GdrChunkedBackward<T>(sh, chunk, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                          p.scale, p.S0(), p.r1.data(), p.DST(), g.dq.data(), g.dk.data(),
                          g.dv.data(), g.dg.data(), g.db.data(), g.ds0.data());
  else
    GdrRecurrentBackward<T>(sh, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(), p.scale,
                            p.S0(), p.r1.data(), p.DST(), g.dq.data(), g.dk.data(), g.dv.data(),
                            g.dg.data(), g.db.data(), g.ds0.data());
  return g;
}

uint64_t SeedOf(const std::string& s) { return std::hash<std::string>{}(s)&0xffffffffu; }

// ---------------------------------------------------------------------------------------------
// 0. The recurrent reference against the defining formula, with explicit dk x dk matrices:
//    S_t = exp(gamma_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;  o_t = s S_t^T q_t.

TEST(GatedDeltaRule, RecurrentForwardMatchesDefiningFormula) {
  struct Sub {
    GdrShape sh;
    Gate gate;
    double beta_max;
  };
  for (const Sub& c : {Sub{{2, 20, 2, 4, 8, 16}, Gate::kLogSigmoid, 1.0},
                       Sub{{1, 20, 1, 1, 16, 16}, Gate::kZero, 2.0},
                       Sub{{1, 20, 1, 2, 8, 4}, Gate::kMixed, 1.0}}) {
    const GdrShape& sh = c.sh;
    const Problem<double> p = MakeProblem(sh, c.gate, c.beta_max, true, true, 77);
    const Fwd<double> f = RunForward(p, false, 0);
    std::vector<double> o(f.o.size()), sT(f.sT.size());
    const int64_t dk = sh.dk, dv = sh.dv, grp = sh.HV / sh.H;
    for (int64_t b = 0; b < sh.B; ++b)
      for (int64_t hv = 0; hv < sh.HV; ++hv) {
        const int64_t h = hv / grp;
        std::vector<double> S(p.s0.begin() + (b * sh.HV + hv) * dk * dv,
                              p.s0.begin() + (b * sh.HV + hv + 1) * dk * dv);
        for (int64_t t = 0; t < sh.T; ++t) {
          const double* k = p.k.data() + ((b * sh.T + t) * sh.H + h) * dk;
          const double* q = p.q.data() + ((b * sh.T + t) * sh.H + h) * dk;
          const double* v = p.v.data() + ((b * sh.T + t) * sh.HV + hv) * dv;
          const double al = std::exp(p.g[(b * sh.T + t) * sh.HV + hv]);
          const double be = p.b[(b * sh.T + t) * sh.HV + hv];
          std::vector<double> A(dk * dk), Sn(dk * dv, 0.0);
          for (int64_t i = 0; i < dk; ++i)
            for (int64_t j = 0; j < dk; ++j) A[i * dk + j] = al * ((i == j) - be * k[i] * k[j]);
          for (int64_t i = 0; i < dk; ++i)
            for (int64_t c2 = 0; c2 < dv; ++c2) {
              double acc = be * k[i] * v[c2];
              for (int64_t j = 0; j < dk; ++j) acc += A[i * dk + j] * S[j * dv + c2];
              Sn[i * dv + c2] = acc;
            }
          S = Sn;
          for (int64_t c2 = 0; c2 < dv; ++c2) {
            double acc = 0;
            for (int64_t i = 0; i < dk; ++i) acc += S[i * dv + c2] * q[i];
            o[((b * sh.T + t) * sh.HV + hv) * dv + c2] = p.scale * acc;
          }
        }
        std::copy(S.begin(), S.end(), sT.begin() + (b * sh.HV + hv) * dk * dv);
      }
    EXPECT_LT(RelErr(f.o, o), 1e-12);
    EXPECT_LT(RelErr(f.sT, sT), 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Chunked forward == recurrent forward.

template <typename T>
void CheckForwardAgreement(double tol) {
  double worst = 0;
  std::string worst_case;
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.name);
    const Problem<T> p =
        Cast<T>(MakeProblem(c.sh, c.gate, c.beta_max, c.init_state, c.d_final, SeedOf(c.name)));
    const Fwd<T> ref = RunForward(p, false, 0);
    const Fwd<T> chk = RunForward(p, true, c.chunk);
    const double eo = RelErr(chk.o, ref.o), es = RelErr(chk.sT, ref.sT);
    EXPECT_LT(eo, tol) << "output";
    EXPECT_LT(es, tol) << "final state";
    EXPECT_GT(MaxAbs(ref.o), 0.0);
    if (std::max(eo, es) > worst) worst = std::max(eo, es), worst_case = c.name;
  }
  std::printf("[errors] forward, %s: worst rel err %.3g (%s), threshold %.0e\n",
              sizeof(T) == 8 ? "double" : "float", worst, worst_case.c_str(), tol);
}

TEST(GatedDeltaRule, ChunkedForwardMatchesRecurrentDouble) { CheckForwardAgreement<double>(1e-10); }
TEST(GatedDeltaRule, ChunkedForwardMatchesRecurrentFloat) { CheckForwardAgreement<float>(1e-4); }

// ---------------------------------------------------------------------------------------------
// 2. Recurrent backward vs central finite differences (double), L = sum(o R1) + sum(S_T R2).
// Threshold: relative error < 1e-6 per input tensor. The denominator is max(max|grad|, 1e-4):
// with all gates at exp(-30) the exact dgamma is ~1e-13, below what a finite difference of an
// O(1) loss resolves (~1e-11); test 3 checks it against the chunked form without that floor.

// Runs a scope with one OpenMP thread: the finite-difference loops make thousands of tiny calls,
// for which a thread team is pure overhead (and slow on a busy machine).
struct SingleThreadScope {
  int saved = omp_get_max_threads();
  SingleThreadScope() { omp_set_num_threads(1); }
  ~SingleThreadScope() { omp_set_num_threads(saved); }
};

double Loss(const Problem<double>& p) {
  const Fwd<double> f = RunForward(p, false, 0);
  double l = 0;
  for (size_t i = 0; i < f.o.size(); ++i) l += f.o[i] * p.r1[i];
  for (size_t i = 0; i < f.sT.size(); ++i) l += f.sT[i] * p.r2[i];
  return l;
}

void CheckFiniteDifferences(const GdrShape& sh, Gate gate, double beta_max, const char* name) {
  SCOPED_TRACE(name);
  Problem<double> p = MakeProblem(sh, gate, beta_max, true, true, SeedOf(name));
  const Grads<double> g = RunBackward(p, false, 0);
  std::vector<double>* inputs[6] = {&p.q, &p.k, &p.v, &p.g, &p.b, &p.s0};
  const std::vector<double>* grads[6] = {&g.dq, &g.dk, &g.dv, &g.dg, &g.db, &g.ds0};
  const double h = 1e-5;
  SingleThreadScope single_thread;
  for (int t = 0; t < 6; ++t) {
    std::vector<double>& x = *inputs[t];
    std::vector<double> fd(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = Loss(p);
      x[i] = x0 - h;
      const double lm = Loss(p);
      x[i] = x0;
      fd[i] = (lp - lm) / (2 * h);
    }
    const double err = RelErr(*grads[t], fd, 1e-4);
    EXPECT_LT(err, 1e-6) << Grads<double>::kNames[t];
    std::printf("[errors] finite differences %s %s: rel err %.3g\n", name, Grads<double>::kNames[t],
                err);
    EXPECT_TRUE(AllFinite(*grads[t])) << Grads<double>::kNames[t];
  }
}

TEST(GatedDeltaRule, RecurrentBackwardFiniteDifferences) {
  CheckFiniteDifferences({2, 9, 2, 4, 8, 16}, Gate::kLogSigmoid, 1.0, "fd_grouped");
  CheckFiniteDifferences({1, 9, 1, 1, 16, 16}, Gate::kLogSigmoid, 2.0, "fd_beta2_dk16");
  CheckFiniteDifferences({1, 9, 2, 2, 8, 16}, Gate::kZero, 1.0, "fd_gate_one");
  CheckFiniteDifferences({1, 9, 2, 4, 8, 16}, Gate::kStrong, 1.0, "fd_strong");
  CheckFiniteDifferences({1, 12, 2, 4, 8, 16}, Gate::kMixed, 2.0, "fd_mixed");
  CheckFiniteDifferences({2, 1, 1, 2, 8, 16}, Gate::kLogSigmoid, 1.0, "fd_T1");
}

// The recurrent backward checkpoints every 64 steps and recomputes inside a block: check it on a
// T = 150 sequence (three blocks) against finite differences at 40 sampled coordinates per input.
TEST(GatedDeltaRule, RecurrentBackwardFiniteDifferencesLongSequence) {
  Problem<double> p = MakeProblem({1, 150, 1, 1, 4, 8}, Gate::kLogSigmoid, 1.0, true, true, 7);
  for (auto& e : p.g) e *= 0.05;  // keep memory over the whole sequence
  const Grads<double> g = RunBackward(p, false, 0);
  std::vector<double>* inputs[6] = {&p.q, &p.k, &p.v, &p.g, &p.b, &p.s0};
  const std::vector<double>* grads[6] = {&g.dq, &g.dk, &g.dv, &g.dg, &g.db, &g.ds0};
  std::mt19937_64 rng(11);
  const double h = 1e-5;
  SingleThreadScope single_thread;
  for (int t = 0; t < 6; ++t) {
    std::vector<double>& x = *inputs[t];
    std::uniform_int_distribution<size_t> pick(0, x.size() - 1);
    std::vector<double> fd, an;
    for (int s = 0; s < 40; ++s) {
      const size_t i = pick(rng);
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = Loss(p);
      x[i] = x0 - h;
      const double lm = Loss(p);
      x[i] = x0;
      fd.push_back((lp - lm) / (2 * h));
      an.push_back((*grads[t])[i]);
    }
    EXPECT_LT(RelErr(an, fd, 1e-4), 1e-6) << Grads<double>::kNames[t];
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Chunked backward == recurrent backward.

template <typename T>
void CheckBackwardAgreement(double tol) {
  double worst = 0;
  std::string worst_case;
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.name);
    const Problem<T> p =
        Cast<T>(MakeProblem(c.sh, c.gate, c.beta_max, c.init_state, c.d_final, SeedOf(c.name)));
    Grads<T> ref = RunBackward(p, false, 0);
    Grads<T> chk = RunBackward(p, true, c.chunk);
    for (int t = 0; t < 6; ++t) {
      const double err = RelErr(*chk.at(t), *ref.at(t));
      EXPECT_LT(err, tol) << Grads<T>::kNames[t];
      EXPECT_GT(MaxAbs(*ref.at(t)), 0.0) << Grads<T>::kNames[t];
      if (err > worst) worst = err, worst_case = c.name + "/" + Grads<T>::kNames[t];
    }
  }
  std::printf("[errors] backward, %s: worst rel err %.3g (%s), threshold %.0e\n",
              sizeof(T) == 8 ? "double" : "float", worst, worst_case.c_str(), tol);
}

TEST(GatedDeltaRule, ChunkedBackwardMatchesRecurrentDouble) {
  CheckBackwardAgreement<double>(1e-9);
}
TEST(GatedDeltaRule, ChunkedBackwardMatchesRecurrentFloat) { CheckBackwardAgreement<float>(1e-3); }

// In the all-strong-decay regime the exact dgamma is ~exp(-30) times O(1): check it on its own
// scale (a bug in the decay gradient would hide behind the other tensors' scale otherwise).
TEST(GatedDeltaRule, ChunkedDecayGradientUnderStrongDecay) {
  for (int64_t chunk : {16, 64}) {
    const Problem<double> p =
        MakeProblem({1, 100, 2, 2, 16, 16}, Gate::kStrong, 1.0, true, true, 100 + chunk);
    const Grads<double> ref = RunBackward(p, false, 0);
    const Grads<double> chk = RunBackward(p, true, chunk);
    EXPECT_LT(MaxAbs(ref.dg), 1e-9);
    EXPECT_GT(MaxAbs(ref.dg), 1e-20);
    EXPECT_LT(RelErr(chk.dg, ref.dg), 1e-9) << "chunk " << chunk;
  }
}

// ---------------------------------------------------------------------------------------------
// 4. No NaN / inf anywhere, including long sequences with gates at 1 and beta up to 2.

template <typename T>
void CheckFinite(const Problem<T>& p, int64_t chunk) {
  for (bool chunked : {false, true}) {
    const Fwd<T> f = RunForward(p, chunked, chunk);
    EXPECT_TRUE(AllFinite(f.o)) << "o, chunked=" << chunked;
    EXPECT_TRUE(AllFinite(f.sT)) << "S_T, chunked=" << chunked;
    Grads<T> g = RunBackward(p, chunked, chunk);
    for (int t = 0; t < 6; ++t)
      EXPECT_TRUE(AllFinite(*g.at(t))) << Grads<T>::kNames[t] << ", chunked=" << chunked;
  }
}

TEST(GatedDeltaRule, AllOutputsFinite) {
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.name);
    const Problem<double> p =
        MakeProblem(c.sh, c.gate, c.beta_max, c.init_state, c.d_final, SeedOf(c.name));
    CheckFinite(p, c.chunk);
    CheckFinite(Cast<float>(p), c.chunk);
  }
  for (Gate gate : {Gate::kZero, Gate::kStrong, Gate::kMixed}) {
    SCOPED_TRACE(static_cast<int>(gate));
    const Problem<double> p = MakeProblem({1, 600, 1, 2, 16, 32}, gate, 2.0, true, true, 5);
    CheckFinite(Cast<float>(p), 64);
  }
}

// ---------------------------------------------------------------------------------------------
// Other contracts.

// The chunked kernels' matrix products have SSE (baseline), AVX2 and AVX-512 code paths; check
// every one this CPU can run, on sizes that exercise the wide column blocks and all remainders.
TEST(GatedDeltaRule, EveryVectorCodePathMatchesRecurrent) {
  const int saved = gdr_internal::GdrVectorLevel();
  struct Sub {
    GdrShape sh;
    int64_t chunk;
  };
  for (int level = 0; level <= 2; ++level) {
    if (gdr_internal::GdrSetVectorLevelForTesting(level) != level) continue;
    std::printf("[paths] vector level %d\n", level);
    for (const Sub& c : {Sub{{1, 150, 2, 2, 64, 128}, 64}, Sub{{1, 70, 1, 2, 41, 75}, 30}}) {
      SCOPED_TRACE(testing::Message() << "level " << level << " dk " << c.sh.dk);
      const Problem<double> pd =
          MakeProblem(c.sh, Gate::kMixed, 2.0, true, true, 300 + level + c.sh.dk);
      const Problem<float> pf = Cast<float>(pd);
      const Fwd<double> rd = RunForward(pd, false, 0), cd = RunForward(pd, true, c.chunk);
      const Fwd<float> rf = RunForward(pf, false, 0), cf = RunForward(pf, true, c.chunk);
      EXPECT_LT(RelErr(cd.o, rd.o), 1e-10);
      EXPECT_LT(RelErr(cd.sT, rd.sT), 1e-10);
      EXPECT_LT(RelErr(cf.o, rf.o), 1e-4);
      EXPECT_LT(RelErr(cf.sT, rf.sT), 1e-4);
      Grads<double> gd = RunBackward(pd, false, 0), gcd = RunBackward(pd, true, c.chunk);
      Grads<float> gf = RunBackward(pf, false, 0), gcf = RunBackward(pf, true, c.chunk);
      for (int t = 0; t < 6; ++t) {
        EXPECT_LT(RelErr(*gcd.at(t), *gd.at(t)), 1e-9) << Grads<double>::kNames[t];
        EXPECT_LT(RelErr(*gcf.at(t), *gf.at(t)), 1e-3) << Grads<float>::kNames[t];
      }
    }
  }
  gdr_internal::GdrSetVectorLevelForTesting(saved);
}

// Results do not depend on the number of OpenMP threads (each (batch, key head) pair is owned by
// one thread).
TEST(GatedDeltaRule, DeterministicAcrossThreadCounts) {
  const Problem<float> p =
      Cast<float>(MakeProblem({3, 70, 2, 4, 8, 16}, Gate::kLogSigmoid, 1.0, true, true, 3));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Fwd<float> f1 = RunForward(p, true, 32);
  const Grads<float> g1 = RunBackward(p, true, 32);
  omp_set_num_threads(std::max(2, saved));
  const Fwd<float> f2 = RunForward(p, true, 32);
  Grads<float> g2 = RunBackward(p, true, 32);
  omp_set_num_threads(saved);
  EXPECT_EQ(f1.o, f2.o);
  EXPECT_EQ(f1.sT, f2.sT);
  Grads<float> g1c = g1;
  for (int t = 0; t < 6; ++t) EXPECT_EQ(*g1c.at(t), *g2.at(t)) << Grads<float>::kNames[t];
}

// A null initial state means zero; a null d_final_state means zero; null outputs are skipped.
TEST(GatedDeltaRule, NullStatesMeanZero) {
  Problem<double> p = MakeProblem({1, 40, 1, 2, 8, 16}, Gate::kLogSigmoid, 1.0, true, true, 9);
  std::fill(p.s0.begin(), p.s0.end(), 0.0);
  std::fill(p.r2.begin(), p.r2.end(), 0.0);
  const Fwd<double> with = RunForward(p, true, 16);
  const Grads<double> gwith = RunBackward(p, true, 16);
  p.init_state = false;
  p.d_final = false;
  for (bool chunked : {false, true}) {
    const Fwd<double> f = RunForward(p, chunked, 16);
    EXPECT_LT(RelErr(f.o, with.o), 1e-12);
    EXPECT_LT(RelErr(f.sT, with.sT), 1e-12);
    std::vector<double> o(f.o.size());
    const auto& sh = p.sh;
    std::vector<double> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dg(p.g.size()),
        db(p.b.size());
    if (chunked) {
      GdrChunkedForward<double>(sh, 16, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                                p.scale, nullptr, o.data(), nullptr);
      GdrChunkedBackward<double>(sh, 16, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                                 p.scale, nullptr, p.r1.data(), nullptr, dq.data(), dk.data(),
                                 dv.data(), dg.data(), db.data(), nullptr);
    } else {
      GdrRecurrentForward<double>(sh, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                                  p.scale, nullptr, o.data(), nullptr);
      GdrRecurrentBackward<double>(sh, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                                   p.scale, nullptr, p.r1.data(), nullptr, dq.data(), dk.data(),
                                   dv.data(), dg.data(), db.data(), nullptr);
    }
    EXPECT_LT(RelErr(o, with.o), 1e-12);
    EXPECT_LT(RelErr(dq, gwith.dq), 1e-9);
    EXPECT_LT(RelErr(dk, gwith.dk), 1e-9);
    EXPECT_LT(RelErr(dv, gwith.dv), 1e-9);
    EXPECT_LT(RelErr(dg, gwith.dg), 1e-9);
    EXPECT_LT(RelErr(db, gwith.db), 1e-9);
  }
}

TEST(GatedDeltaRuleDeathTest, InvalidShapeAborts) {
  std::vector<float> x(64, 0.5f), y(64);
  const GdrShape bad{1, 2, 2, 3, 2, 2};  // HV not a multiple of H
  EXPECT_DEATH(GdrChunkedForward<float>(bad, 64, x.data(), x.data(), x.data(), x.data(), x.data(),
                                        1.0f, nullptr, y.data(), nullptr),
               "HV a multiple of H");
}

// ---------------------------------------------------------------------------------------------
// Timing printout (no assertion): the layer size of the brief.

TEST(GatedDeltaRule, TimingChunkedFloat) {
  const GdrShape sh{4, 512, 6, 6, 64, 128};
  const Problem<float> p = Cast<float>(MakeProblem(sh, Gate::kLogSigmoid, 1.0, true, true, 1234));
  std::vector<float> o(p.v.size()), sT(p.s0.size());
  std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dg(p.g.size()), db(p.b.size()),
      ds0(p.s0.size());
  auto fwd = [&] {
    GdrChunkedForward<float>(sh, 64, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                             p.scale, p.S0(), o.data(), sT.data());
  };
  auto bwd = [&] {
    GdrChunkedBackward<float>(sh, 64, p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.b.data(),
                              p.scale, p.S0(), p.r1.data(), p.DST(), dq.data(), dk.data(),
                              dv.data(), dg.data(), db.data(), ds0.data());
  };
  auto best_of = [](int n, auto&& f) {
    double best = 1e30;
    for (int i = 0; i < n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return best;
  };
  fwd();
  bwd();
  const double tf = best_of(5, fwd), tb = best_of(5, bwd);
  std::printf(
      "[timing] chunked C=64 float B=4 T=512 H=HV=6 dk=64 dv=128, %d threads: "
      "forward %.2f ms, backward %.2f ms, total %.2f ms\n",
      omp_get_max_threads(), tf, tb, tf + tb);
  EXPECT_TRUE(AllFinite(o));
  EXPECT_TRUE(AllFinite(dq));
}

}  // namespace
}  // namespace gdn::cpu
