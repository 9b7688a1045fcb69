// Gradient checks of the whole language model in float64: the analytic gradient of every parameter
// tensor (LanguageModel::ForwardBackward) against central finite differences of
// LanguageModel::ForwardLoss, on a tiny model whose chunks are partial (T = 7, chunk 4), for SP
// and muP, tied and untied heads, both recurrences, grouped values, negative eigenvalues and the
// two gate regimes where chunked kernels are known to lose accuracy (alpha ~ 1, strong decay).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/lm.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

// Thresholds.
// Per tensor: max_i |analytic_i - fd_i| / max(max_i |fd_i|, kFloor) <= kRelTol. Observed: worst
// 2e-8 over the regimes with O(1) gradients, ~2e-6 for the gate tensors near alpha = 1, whose
// gradients are ~5e-5 (FD roundoff ~1e-10 absolute).
constexpr double kRelTol = 1e-5;
// The floor keeps tensors whose true gradient is (nearly) zero from being judged by the FD noise
// alone: A_log, dt_bias and a_proj when alpha ~ 1 (dgamma/dA_log = gamma ~ 1e-13) or when the
// decay is so strong that alpha ~ e^-100 kills d/dgamma. For them the check says |analytic| is
// below kRelTol * kFloor = 1e-10, i.e. zero up to the finite differences' own roundoff. In every
// other regime each tensor must have max |fd| > kFloor (asserted), so it is a relative check.
constexpr double kFloor = 1e-5;
// FD: 4-point central difference, f'(x) = [8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))] / 12h,
// h = kStep * max(1, |x|); truncation error O(h^4), roundoff ~ 1e-16 * loss / h ~ 1e-10.
// The loss has large high derivatives here: where q or k is small before its L2 norm (dk = 4, few
// tokens) it bends on a scale ~1e-3, so h = 1e-3 gives errors ~1e-1 and h = 1e-4 ~1e-5 relative
// (measured; the error falls as h^4, i.e. truncation, not a gradient bug); h = 1e-5 gives ~1e-8.
constexpr double kStep = 1e-5;
// Coordinates per tensor: all of them for tensors up to kAllUpTo elements, else kSample random
// ones (the embedding is always checked in full).
constexpr int64_t kAllUpTo = 64;
constexpr int kSample = 20;

// One OpenMP thread while a test runs: the model is tiny, and on a busy 2-core machine the
// kernels' parallel regions (next to OpenBLAS's own threads) can make a forward pass 100x slower.
struct SingleThread {
  int saved = omp_get_max_threads();
  SingleThread() { omp_set_num_threads(1); }
  ~SingleThread() { omp_set_num_threads(saved); }
};

// The gate regimes. kNearOne and kStrongDecay are the extremes of the brief (alpha = 1 - 1e-13 and
// gamma ~ -100); there d loss / d gamma vanishes, so the two "visible" regimes are added to see the
// decay gradient itself near those extremes: alpha ~ 0.9993 per token (exp(G) ~ 1 over a chunk) and
// gamma ~ -9.5 per token (exp(G_C) ~ 1e-17 over a chunk of 4).
enum class Gates { kInit, kNearOne, kNearOneVisible, kStrongDecay, kStrongVisible };

struct Case {
  std::string name;
  ParametrizationSpec::Kind kind = ParametrizationSpec::SP;
  int width = 8;
  int base_width = 8;
  bool tied = false;
  ModelSpec::Recurrence recurrence = ModelSpec::CHUNKED;
  int values_per_key = 1;
  bool negative_eigenvalues = false;
  Gates gates = Gates::kInit;
  double alpha_in = 1.0, alpha_out = 1.0;
};

ExperimentSpec TinySpec(const Case& c) {
  ExperimentSpec s;
  FillDefaults(&s);
  ModelSpec* m = s.mutable_model();
  m->set_vocab_size(11);
  m->set_width(c.width);
  m->set_depth(2);
  m->set_head_dim(4);
  m->set_key_dim_ratio(1.0);  // width 8: H = 2 key heads of dk = 4
  m->set_expand_v(2);
  m->set_mlp_ratio(2);
  m->set_chunk_size(4);
  m->set_recurrence(c.recurrence);
  m->set_value_heads_per_key_head(c.values_per_key);
  m->set_negative_eigenvalues(c.negative_eigenvalues);
  m->set_tie_embeddings(c.tied);
  ParametrizationSpec* p = s.mutable_parametrization();
  p->set_kind(c.kind);
  p->set_base_width(c.base_width);
  p->set_init_std(0.3);  // large weights: gradients well above the FD noise
  p->set_zero_init_readout(false);
  p->set_alpha_in(c.alpha_in);
  p->set_alpha_out(c.alpha_out);
  return s;
}

void SetGates(LanguageModel& model, Gates gates) {
  for (const auto& p : model.params().all()) {
    const bool a_log = p->name.ends_with("A_log"), dt_bias = p->name.ends_with("dt_bias");
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      if (gates == Gates::kNearOne && a_log) p->value.set(i, -30.0);  // alpha = 1 - O(1e-13)
      if (gates == Gates::kStrongDecay && a_log) p->value.set(i, 3.0);
      if (gates == Gates::kStrongDecay && dt_bias) p->value.set(i, 5.0);  // gamma ~ -e^3 * 5 ~ -100
      if (gates == Gates::kNearOneVisible && a_log) p->value.set(i, -8.0);
      if (gates == Gates::kNearOneVisible && dt_bias) p->value.set(i, 2.0);  // gamma ~ -7e-4
      if (gates == Gates::kStrongVisible && a_log) p->value.set(i, 1.5);
      if (gates == Gates::kStrongVisible && dt_bias) p->value.set(i, 2.0);  // gamma ~ -9.5
    }
  }
}

std::unique_ptr<LanguageModel> MakeModel(const ExperimentSpec& spec, Gates gates) {
  EXPECT_TRUE(ValidateModelSpec(spec).ok()) << ValidateModelSpec(spec);
  auto model = std::make_unique<LanguageModel>(spec, DType::kF64);
  model->Initialize(/*seed=*/1234);
  SetGates(*model, gates);
  return model;
}

// The analytic gradients of every parameter, in params() order.
std::vector<Tensor> AnalyticGrads(LanguageModel& model, const Tensor& tokens, double* loss) {
  model.params().ZeroGrads();
  *loss = model.ForwardBackward(tokens, 1.0);
  std::vector<Tensor> g;
  for (const auto& p : model.params().all()) g.push_back(p->grad.Clone());
  return g;
}

double FiniteDifference(LanguageModel& model, Parameter& p, int64_t i, const Tensor& tokens) {
  const double x0 = p.value.at(i);
  const double h = kStep * std::max(1.0, std::abs(x0));
  auto f = [&](double dx) {
    p.value.set(i, x0 + dx);
    return model.ForwardLoss(tokens);
  };
  const double d1 = f(h) - f(-h), d2 = f(2 * h) - f(-2 * h);
  p.value.set(i, x0);
  return (8 * d1 - d2) / (12 * h);
}

struct TensorCheck {
  std::string name;
  double max_fd = 0, max_err = 0, rel = 0;
  int64_t coords = 0;
};

std::vector<TensorCheck> CheckAllParams(LanguageModel& model, const Tensor& tokens) {
  double loss = 0;
  const std::vector<Tensor> grads = AnalyticGrads(model, tokens, &loss);
  EXPECT_TRUE(std::isfinite(loss));
  // ForwardLoss must be the loss ForwardBackward reported (same forward pass).
  EXPECT_DOUBLE_EQ(model.ForwardLoss(tokens), loss);
  std::mt19937_64 gen(99);
  std::vector<TensorCheck> out;
  const auto& all = model.params().all();
  for (size_t k = 0; k < all.size(); ++k) {
    Parameter& p = *all[k];
    const int64_t n = p.value.numel();
    std::vector<int64_t> coords;
    if (n <= kAllUpTo || p.name == "embedding") {
      for (int64_t i = 0; i < n; ++i) coords.push_back(i);
    } else {
      std::uniform_int_distribution<int64_t> dist(0, n - 1);
      for (int j = 0; j < kSample; ++j) coords.push_back(dist(gen));
    }
    TensorCheck c{p.name};
    for (int64_t i : coords) {
      const double fd = FiniteDifference(model, p, i, tokens);
      c.max_fd = std::max(c.max_fd, std::abs(fd));
      c.max_err = std::max(c.max_err, std::abs(grads[k].at(i) - fd));
    }
    c.coords = static_cast<int64_t>(coords.size());
    c.rel = c.max_err / std::max(c.max_fd, kFloor);
    out.push_back(c);
  }
  return out;
}

void RunCase(const Case& c) {
  SingleThread one;
  SCOPED_TRACE(c.name);
  const ExperimentSpec spec = TinySpec(c);
  auto model = MakeModel(spec, c.gates);
  const Tensor tokens = RandomTokens(/*B=*/2, /*T+1=*/8, 11, /*seed=*/7);
  const std::vector<TensorCheck> checks = CheckAllParams(*model, tokens);
  ASSERT_EQ(checks.size(), model->params().all().size());
  double worst = 0;
  std::string worst_name;
  int relative = 0;  // tensors judged relative to their own gradient size (max |fd| > kFloor)
  for (const TensorCheck& t : checks) {
    EXPECT_LE(t.rel, kRelTol) << c.name << ": " << t.name << " max|a-fd| " << t.max_err
                              << " max|fd| " << t.max_fd << " (" << t.coords << " coords)";
    if (t.max_fd > kFloor) ++relative;
    if (t.rel > worst) worst = t.rel, worst_name = t.name;
  }
  std::printf("[gradcheck] %-28s tensors %zu (relative %d)  worst rel err %.2e (%s)\n",
              c.name.c_str(), checks.size(), relative, worst, worst_name.c_str());
  // The check must have real signal: in every regime most tensors have gradients far above the
  // floor. (Only A_log, dt_bias and a_proj may be ~0, in the two extreme gate regimes.)
  const bool extreme = c.gates == Gates::kNearOne || c.gates == Gates::kStrongDecay;
  const int may_vanish = extreme ? 3 * 2 : 0;  // 3 tensors x depth 2
  EXPECT_GE(relative, static_cast<int>(checks.size()) - may_vanish) << c.name;
  if (!extreme) {
    for (const TensorCheck& t : checks)
      EXPECT_GT(t.max_fd, kFloor) << c.name << ": " << t.name << " has almost no gradient";
  }
}

TEST(GradientCheck, SpUntiedChunked) { RunCase({.name = "sp_untied_chunked"}); }

TEST(GradientCheck, SpUntiedSequential) {
  RunCase({.name = "sp_untied_sequential", .recurrence = ModelSpec::SEQUENTIAL});
}

TEST(GradientCheck, SpTiedChunked) { RunCase({.name = "sp_tied_chunked", .tied = true}); }

TEST(GradientCheck, MupUntiedChunkedWidth16) {
  RunCase({.name = "mup_m2_untied_chunked",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8});
}

TEST(GradientCheck, MupTiedSequentialWidth16) {
  RunCase({.name = "mup_m2_tied_sequential",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8,
           .tied = true,
           .recurrence = ModelSpec::SEQUENTIAL});
}

TEST(GradientCheck, MupTiedChunkedMultipliers) {
  // Non-unit alpha_in and alpha_out: the forward multipliers must enter the backward pass too.
  RunCase({.name = "mup_m2_tied_chunked_alpha",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8,
           .tied = true,
           .alpha_in = 1.7,
           .alpha_out = 2.5});
}

TEST(GradientCheck, GroupedValuesChunked) {
  RunCase({.name = "grouped_values_chunked", .values_per_key = 2});
}

TEST(GradientCheck, GroupedValuesSequentialMup) {
  RunCase({.name = "grouped_values_seq_mup",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8,
           .recurrence = ModelSpec::SEQUENTIAL,
           .values_per_key = 2});
}

TEST(GradientCheck, NegativeEigenvalues) {
  RunCase({.name = "negative_eigenvalues", .negative_eigenvalues = true});
}

TEST(GradientCheck, GatesNearOneChunked) {
  RunCase({.name = "alpha_near_1_chunked", .gates = Gates::kNearOne});
}

TEST(GradientCheck, GatesNearOneSequential) {
  RunCase({.name = "alpha_near_1_sequential",
           .recurrence = ModelSpec::SEQUENTIAL,
           .gates = Gates::kNearOne});
}

TEST(GradientCheck, GatesNearOneVisibleChunked) {
  RunCase({.name = "alpha_0.9993_chunked", .gates = Gates::kNearOneVisible});
}

TEST(GradientCheck, GatesNearOneVisibleSequentialMupTied) {
  RunCase({.name = "alpha_0.9993_seq_mup_tied",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8,
           .tied = true,
           .recurrence = ModelSpec::SEQUENTIAL,
           .gates = Gates::kNearOneVisible});
}

TEST(GradientCheck, StrongVisibleChunkedGrouped) {
  RunCase({.name = "gamma_-9.5_chunked_grouped",
           .values_per_key = 2,
           .gates = Gates::kStrongVisible});
}

TEST(GradientCheck, StrongVisibleSequential) {
  RunCase({.name = "gamma_-9.5_sequential",
           .recurrence = ModelSpec::SEQUENTIAL,
           .gates = Gates::kStrongVisible});
}

TEST(GradientCheck, StrongDecayChunked) {
  RunCase({.name = "strong_decay_chunked", .gates = Gates::kStrongDecay});
}

TEST(GradientCheck, StrongDecaySequentialGroupedMup) {
  RunCase({.name = "strong_decay_seq_grouped_mup",
           .kind = ParametrizationSpec::MUP,
           .width = 16,
           .base_width = 8,
           .recurrence = ModelSpec::SEQUENTIAL,
           .values_per_key = 2,
           .negative_eigenvalues = true,
           .gates = Gates::kStrongDecay});
}

// The input embedding's gradient in detail (untied, so it only comes from the input path): rows
// of tokens that never appear as inputs get exactly zero, the others match finite differences,
// and the gradient is linear in alpha_in as the chain rule says (dL/dE = alpha_in dL/dx).
TEST(GradientCheck, InputEmbeddingGradient) {
  SingleThread one;
  Case c{.name = "embedding", .alpha_in = 1.7};
  const ExperimentSpec spec = TinySpec(c);
  auto model = MakeModel(spec, Gates::kInit);
  Tensor tokens = RandomTokens(2, 8, 11, 7);
  // Make token 10 absent from the inputs (it may still be a target).
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 7; ++t)
      if (tokens.data<int32_t>()[b * 8 + t] == 10) tokens.data<int32_t>()[b * 8 + t] = 3;
  double loss = 0;
  const std::vector<Tensor> grads = AnalyticGrads(*model, tokens, &loss);
  Parameter* emb = model->params().Find("embedding");
  ASSERT_NE(emb, nullptr);
  const int64_t d = emb->value.dim(1);
  const size_t k = std::find_if(model->params().all().begin(), model->params().all().end(),
                                [&](const auto& p) { return p.get() == emb; }) -
                   model->params().all().begin();
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(grads[k].at(10 * d + j), 0.0) << "unused row 10";
  double max_fd = 0, max_err = 0;
  for (int64_t i = 0; i < emb->value.numel(); ++i) {
    const double fd = FiniteDifference(*model, *emb, i, tokens);
    max_fd = std::max(max_fd, std::abs(fd));
    max_err = std::max(max_err, std::abs(fd - grads[k].at(i)));
  }
  EXPECT_GT(max_fd, 1e-3);
  EXPECT_LE(max_err / max_fd, kRelTol) << "max|a-fd| " << max_err << " max|fd| " << max_fd;
}

// ForwardBackward's contract: gradients accumulate (+=) and are scaled by grad_scale.
TEST(GradientCheck, GradientsAccumulateWithGradScale) {
  const ExperimentSpec spec = TinySpec({.name = "accumulate"});
  auto model = MakeModel(spec, Gates::kInit);
  const Tensor tokens = RandomTokens(2, 8, 11, 7);
  double loss = 0;
  const std::vector<Tensor> g1 = AnalyticGrads(*model, tokens, &loss);
  model->params().ZeroGrads();
  EXPECT_EQ(model->ForwardBackward(tokens, 0.5), loss);  // the loss itself is not scaled
  EXPECT_EQ(model->ForwardBackward(tokens, 2.0), loss);
  const auto& all = model->params().all();
  for (size_t k = 0; k < all.size(); ++k)
    for (int64_t i = 0; i < g1[k].numel(); ++i)
      ASSERT_NEAR(all[k]->grad.at(i), 2.5 * g1[k].at(i), 1e-12 * (1 + std::abs(g1[k].at(i))))
          << all[k]->name << "[" << i << "]";
}

// Activation recomputation changes where activations come from, not what they are: the same loss
// and bitwise the same gradients, over two accumulated passes, with the activations of all but the
// input of each layer dropped after the forward.
TEST(GradientCheck, RecomputationGivesTheSameGradients) {
  SingleThread one;
  for (int depth : {1, 3}) {
    ExperimentSpec spec = TinySpec({.name = "recompute"});
    spec.mutable_model()->set_depth(depth);
    auto plain = MakeModel(spec, Gates::kInit);
    auto again = MakeModel(spec, Gates::kInit);
    again->set_recompute(true);
    for (uint64_t seed : {7, 8}) {
      const Tensor tokens = RandomTokens(2, 10, 11, seed);
      EXPECT_EQ(plain->ForwardBackward(tokens, 0.5), again->ForwardBackward(tokens, 0.5));
    }
    const auto& a = plain->params().all();
    const auto& b = again->params().all();
    int nonzero = 0;
    for (size_t k = 0; k < a.size(); ++k)
      for (int64_t i = 0; i < a[k]->grad.numel(); ++i) {
        ASSERT_EQ(a[k]->grad.at(i), b[k]->grad.at(i)) << a[k]->name << "[" << i << "] depth " << depth;
        nonzero += a[k]->grad.at(i) != 0;
      }
    EXPECT_GT(nonzero, 100);
  }
}

// The head and the loss in chunks of rows (the full logits never held at once) against one chunk:
// the same loss and gradients up to float64 summation order, with a partial last chunk; and
// ForwardLoss reports the loss ForwardBackward does.
TEST(GradientCheck, HeadChunksGiveTheSameLossAndGradients) {
  SingleThread one;
  const ExperimentSpec spec = TinySpec({.name = "head chunks"});
  auto whole = MakeModel(spec, Gates::kInit);
  setenv("GDN_TEST_MAX_LOGITS_ELEMENTS", "33", 1);  // 3 rows of the 11-word vocabulary
  auto chunked = MakeModel(spec, Gates::kInit);
  unsetenv("GDN_TEST_MAX_LOGITS_ELEMENTS");
  const Tensor tokens = RandomTokens(2, 11, 11, 5);  // 20 rows: 6 chunks of 3 and one of 2
  const double a = whole->ForwardBackward(tokens, 0.7), b = chunked->ForwardBackward(tokens, 0.7);
  EXPECT_NEAR(a, b, 1e-14 * a);
  EXPECT_EQ(chunked->ForwardLoss(tokens), b);
  const auto& pa = whole->params().all();
  const auto& pb = chunked->params().all();
  for (size_t k = 0; k < pa.size(); ++k) {
    double scale = 0;
    for (int64_t i = 0; i < pa[k]->grad.numel(); ++i) scale = std::max(scale, std::abs(pa[k]->grad.at(i)));
    ASSERT_GT(scale, 0) << pa[k]->name;
    for (int64_t i = 0; i < pa[k]->grad.numel(); ++i)
      ASSERT_NEAR(pa[k]->grad.at(i), pb[k]->grad.at(i), 1e-12 * scale) << pa[k]->name << "[" << i << "]";
  }
}

// Sequential and chunked recurrences compute the same function: same loss (1e-12) and the same
// gradients (1e-9 relative to each tensor's largest gradient) in float64, in all gate regimes,
// with T = 13 (three full chunks of 4 and a partial one).
TEST(GradientCheck, SequentialAndChunkedAgree) {
  SingleThread one;
  for (Gates gates : {Gates::kInit, Gates::kNearOne, Gates::kNearOneVisible, Gates::kStrongDecay,
                        Gates::kStrongVisible}) {
    for (int vpk : {1, 2}) {
      Case c{.name = "agree", .values_per_key = vpk, .negative_eigenvalues = vpk == 2,
             .gates = gates};
      SCOPED_TRACE("gates " + std::to_string(static_cast<int>(gates)) + " vpk " +
                   std::to_string(vpk));
      c.recurrence = ModelSpec::CHUNKED;
      auto chunked = MakeModel(TinySpec(c), gates);
      c.recurrence = ModelSpec::SEQUENTIAL;
      auto sequential = MakeModel(TinySpec(c), gates);
      const Tensor tokens = RandomTokens(3, 14, 11, 21);
      double lc = 0, ls = 0;
      const std::vector<Tensor> gc = AnalyticGrads(*chunked, tokens, &lc);
      const std::vector<Tensor> gs = AnalyticGrads(*sequential, tokens, &ls);
      EXPECT_NEAR(lc, ls, 1e-12);
      ASSERT_EQ(gc.size(), gs.size());
      for (size_t k = 0; k < gc.size(); ++k) {
        double scale = 0, err = 0;
        for (int64_t i = 0; i < gc[k].numel(); ++i) {
          scale = std::max(scale, std::abs(gs[k].at(i)));
          err = std::max(err, std::abs(gc[k].at(i) - gs[k].at(i)));
        }
        EXPECT_LE(err, 1e-9 * std::max(scale, 1e-3))
            << chunked->params().all()[k]->name << " max|g| " << scale;
      }
    }
  }
}

}  // namespace
}  // namespace gdn
