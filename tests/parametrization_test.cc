// The parametrization as the model applies it: every parameter's class and multipliers checked
// against an expected table written here independently of model/parametrization.cc (from
// shared/docs/mup.md), muP == SP bitwise at m = 1, SP's multipliers width-free, the muP init
// scale measured, and tensor-parallel shards that concatenate to the unsharded init.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gradient_reducer.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

ExperimentSpec BaseSpec(ParametrizationSpec::Kind kind, int width, int base_width,
                        OptimizerSpec::Kind opt) {
  ExperimentSpec s;
  FillDefaults(&s);
  s.mutable_model()->set_width(width);
  s.mutable_model()->set_depth(2);
  s.mutable_model()->set_head_dim(16);
  s.mutable_model()->set_vocab_size(256);
  s.mutable_parametrization()->set_kind(kind);
  s.mutable_parametrization()->set_base_width(base_width);
  s.mutable_optimizer()->set_kind(opt);
  EXPECT_TRUE(ValidateModelSpec(s).ok()) << ValidateModelSpec(s);
  return s;
}

// One OpenMP thread while training the small models: on a busy 2-core machine the kernels'
// parallel regions (next to OpenBLAS's own threads) can make a step 100x slower.
struct SingleThread {
  int saved = omp_get_max_threads();
  SingleThread() { omp_set_num_threads(1); }
  ~SingleThread() { omp_set_num_threads(saved); }
};

bool BitwiseEqual(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ---------------------------------------------------------------------------------------------
// The expected table (shared/docs/mup.md), keyed by the parameter's name.

enum class Role { kInput, kHidden, kOutput, kVector, kFixed, kGateReadout, kUnknown };

// heads_grow_in_size (model.head_scaling HEAD_SIZE): the head count is fixed, so whatever has one
// entry per head (a_proj and b_proj rows, A_log, dt_bias) has no width dimension, and the
// per-head output norm (size dv) has one.
Role RoleOf(const std::string& name, bool heads_grow_in_size = false) {
  const std::string leaf = name.substr(name.rfind('.') + 1);  // whole name when there is no '.'
  if (leaf == "a_proj" || leaf == "b_proj") return heads_grow_in_size ? Role::kGateReadout : Role::kHidden;
  if (leaf == "A_log" || leaf == "dt_bias") return heads_grow_in_size ? Role::kFixed : Role::kVector;
  if (leaf == "o_norm") return heads_grow_in_size ? Role::kVector : Role::kFixed;
  for (const char* h : {"q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"})
    if (leaf == h) return Role::kHidden;
  if (leaf == "embedding") return Role::kInput;
  if (leaf == "lm_head") return Role::kOutput;
  if (leaf == "norm" || leaf.ends_with("_norm") || leaf.ends_with("_conv")) return Role::kVector;
  return Role::kUnknown;
}

ParamClass ClassOf(Role r) {
  switch (r) {
    case Role::kInput: return ParamClass::kInput;
    case Role::kHidden: return ParamClass::kHidden;
    case Role::kOutput: return ParamClass::kOutput;
    case Role::kVector: return ParamClass::kVector;
    case Role::kGateReadout: return ParamClass::kGateReadout;
    default: return ParamClass::kFixed;
  }
}

struct Expected {
  InitKind init;
  double init_std;  // only meaningful for kNormal
  double forward, lr, weight_decay;
};

// m: the width multiplier (1 under SP).
Expected ExpectedFor(const std::string& name, const ParametrizationSpec& p, bool adam, double m,
                     bool heads_grow_in_size) {
  const double sigma = p.init_std();
  const std::string leaf = name.substr(name.rfind('.') + 1);
  switch (RoleOf(name, heads_grow_in_size)) {
    case Role::kInput:  // embedding: sigma, alpha_in, eta (AdamW) / eta*m (SGD), lambda / lambda/m
      return {InitKind::kNormal, sigma, p.alpha_in(), adam ? 1.0 : m, adam ? 1.0 : 1.0 / m};
    case Role::kHidden:  // sigma/sqrt(m), 1, eta/m (AdamW) / eta (SGD), lambda*m / lambda
      return {InitKind::kNormal, sigma / std::sqrt(m), 1.0, adam ? 1.0 / m : 1.0, adam ? m : 1.0};
    case Role::kOutput:  // sigma or 0, alpha_out/m, eta / eta*m, lambda / lambda/m
      return {InitKind::kNormal, p.zero_init_readout() ? 0.0 : sigma, p.alpha_out() / m,
              adam ? 1.0 : m, adam ? 1.0 : 1.0 / m};
    case Role::kVector: {  // width-independent init, 1, eta / eta*m, no decay
      InitKind init = InitKind::kOnes;
      if (leaf.ends_with("_conv")) init = InitKind::kNormal;
      if (leaf == "A_log") init = InitKind::kALog;
      if (leaf == "dt_bias") init = InitKind::kDtBias;
      return {init, sigma, 1.0, adam ? 1.0 : m, 0.0};
    }
    case Role::kFixed: {  // its own init (ones, A_log, dt_bias), 1, eta / eta, no decay
      InitKind init = InitKind::kOnes;
      if (leaf == "A_log") init = InitKind::kALog;
      if (leaf == "dt_bias") init = InitKind::kDtBias;
      return {init, 0.0, 1.0, 1.0, 0.0};
    }
    case Role::kGateReadout:  // the readout rule with 1/m folded in: sigma/m, 1, eta/m, lambda*m
      return {InitKind::kNormal, sigma / m, 1.0, 1.0 / m, m};
    case Role::kUnknown: break;
  }
  ADD_FAILURE() << "no expected row for parameter " << name;
  return {};
}

// Checks every parameter of a model built from `spec` against the table with multiplier m.
void CheckTable(const ExperimentSpec& spec, double m) {
  LanguageModel model(spec, DType::kF32);
  const bool adam = spec.optimizer().kind() == OptimizerSpec::ADAMW;
  const bool by_size = spec.model().head_scaling() == ModelSpec::HEAD_SIZE;
  int counts[6] = {0, 0, 0, 0, 0, 0};
  for (const auto& p : model.params().all()) {
    SCOPED_TRACE(p->name);
    const Role role = RoleOf(p->name, by_size);
    ASSERT_NE(role, Role::kUnknown) << "unexpected parameter name " << p->name;
    ++counts[static_cast<int>(role)];
    const Expected e = ExpectedFor(p->name, spec.parametrization(), adam, m, by_size);
    EXPECT_EQ(p->cls, ClassOf(role));
    EXPECT_EQ(p->init, e.init);
    if (e.init == InitKind::kNormal) EXPECT_DOUBLE_EQ(p->mult.init_std, e.init_std);
    EXPECT_DOUBLE_EQ(p->mult.forward, e.forward);
    EXPECT_DOUBLE_EQ(p->mult.lr, e.lr);
    EXPECT_DOUBLE_EQ(p->mult.weight_decay, e.weight_decay);
  }
  // depth 2: 10 hidden matrices per layer, 7 vector-like (2 norms, 3 convs, A_log, dt_bias) and
  // o_norm per layer, plus the final norm; one embedding; one head unless tied. Heads growing in
  // size: a_proj, b_proj gate-readouts, A_log and dt_bias fixed, o_norm vector-like.
  EXPECT_EQ(counts[static_cast<int>(Role::kHidden)], by_size ? 16 : 20);
  EXPECT_EQ(counts[static_cast<int>(Role::kGateReadout)], by_size ? 4 : 0);
  EXPECT_EQ(counts[static_cast<int>(Role::kVector)], by_size ? 13 : 15);
  EXPECT_EQ(counts[static_cast<int>(Role::kFixed)], by_size ? 4 : 2);
  EXPECT_EQ(counts[static_cast<int>(Role::kInput)], 1);
  EXPECT_EQ(counts[static_cast<int>(Role::kOutput)], spec.model().tie_embeddings() ? 0 : 1);
}

// The decay per step, lr multiplier x weight-decay multiplier, is width-independent for every
// parameter, as shared/docs/mup.md asks: AdamW decays p -= lr * wd * p (decoupled), SGD adds wd * p
// to the gradient, so both decay by lr * wd per step.
void CheckDecayPerStepIsWidthIndependent(OptimizerSpec::Kind opt) {
  std::map<std::string, double> base;
  for (int width : {64, 128, 256, 512}) {
    ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, width, 64, opt);
    LanguageModel model(s, DType::kF32);
    for (const auto& p : model.params().all()) {
      const double decay = p->mult.lr * p->mult.weight_decay;
      if (width == 64) {
        base[p->name] = decay;
      } else {
        ASSERT_TRUE(base.count(p->name)) << p->name;
        EXPECT_NEAR(decay, base[p->name], 1e-15) << p->name << " at width " << width;
      }
    }
  }
}

TEST(Parametrization, AdamWDecayPerStepIsWidthIndependent) {
  CheckDecayPerStepIsWidthIndependent(OptimizerSpec::ADAMW);
}

TEST(Parametrization, SgdDecayPerStepIsWidthIndependent) {
  CheckDecayPerStepIsWidthIndependent(OptimizerSpec::SGD);
}

// The head's forward multiplier is not a parameter field when tied, so it is checked by
// behaviour: a model whose logit multiplier should equal `mult` gives bitwise the same loss as an
// SP model (m = 1) with alpha_out = mult and the same parameter values.
void CheckLogitMultiplier(const ExperimentSpec& spec, double mult) {
  LanguageModel model(spec, DType::kF64);
  model.Initialize(3);
  ExperimentSpec sp = spec;
  sp.mutable_parametrization()->set_kind(ParametrizationSpec::SP);
  sp.mutable_parametrization()->set_alpha_out(mult);
  LanguageModel ref(sp, DType::kF64);
  ASSERT_EQ(ref.params().all().size(), model.params().all().size());
  for (size_t i = 0; i < ref.params().all().size(); ++i)
    ref.params().all()[i]->value.CopyFrom(model.params().all()[i]->value);
  const Tensor tokens = RandomTokens(2, 9, spec.model().vocab_size(), 5);
  Probes a, b;
  EXPECT_EQ(model.ForwardLoss(tokens, &a), ref.ForwardLoss(tokens, &b));
  EXPECT_EQ(a["logits"], b["logits"]);
  // And it is not a no-op: doubling alpha_out doubles the logits.
  sp.mutable_parametrization()->set_alpha_out(2 * mult);
  LanguageModel ref2(sp, DType::kF64);
  for (size_t i = 0; i < ref2.params().all().size(); ++i)
    ref2.params().all()[i]->value.CopyFrom(model.params().all()[i]->value);
  Probes c;
  ref2.ForwardLoss(tokens, &c);
  EXPECT_NEAR(c["logits"], 2 * a["logits"], 1e-12 * a["logits"]);
}

// ---------------------------------------------------------------------------------------------
// (1) At m = 1 muP is SP exactly: same initial values, same losses over 3 steps, bitwise.

std::vector<double> Train(LanguageModel& model, const ExperimentSpec& spec, const Tensor& tokens,
                          int steps) {
  // The trainer's norm, clipping and flat multi-tensor update, on one rank.
  auto one_rank = MakeSingleRankCommunicator();
  GradientReducer reducer(model.params(), {}, nullptr, one_rank.get(), {});
  Optimizer opt(spec.optimizer(), model.params(), &reducer);
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    reducer.ZeroGrads();
    losses.push_back(model.ForwardBackward(tokens));
    opt.Step(step + 1, ScheduledLearningRate(spec.optimizer(), step, steps),
             ClipScale(reducer.GradNorm(), spec.optimizer().grad_clip()));
  }
  losses.push_back(model.ForwardLoss(tokens));
  return losses;
}

void CheckMupEqualsSpAtBaseWidth(OptimizerSpec::Kind opt, bool tied, bool heads_by_size = false) {
  SingleThread one;
  SCOPED_TRACE(std::string(opt == OptimizerSpec::ADAMW ? "AdamW" : "SGD") +
               (tied ? " tied" : " untied") + (heads_by_size ? " heads by size" : ""));
  ExperimentSpec mup = BaseSpec(ParametrizationSpec::MUP, 64, 64, opt);
  // SP ignores base_width: give it a different one to prove it.
  ExperimentSpec sp = BaseSpec(ParametrizationSpec::SP, 64, 16, opt);
  for (ExperimentSpec* s : {&mup, &sp}) {
    s->mutable_model()->set_tie_embeddings(tied);
    if (heads_by_size) {
      s->mutable_model()->set_head_scaling(ModelSpec::HEAD_SIZE);
      s->mutable_model()->set_num_heads(2);
    }
    s->mutable_parametrization()->set_init_std(0.05);
    s->mutable_parametrization()->set_alpha_out(1.5);
    s->mutable_optimizer()->set_lr(opt == OptimizerSpec::ADAMW ? 3e-3 : 0.3);
    s->mutable_optimizer()->set_weight_decay(0.1);
    s->mutable_optimizer()->set_warmup_steps(1);
    s->mutable_optimizer()->set_grad_clip(0.5);
  }
  LanguageModel a(mup, DType::kF32), b(sp, DType::kF32);
  a.Initialize(11);
  b.Initialize(11);
  ASSERT_EQ(a.params().all().size(), b.params().all().size());
  for (size_t i = 0; i < a.params().all().size(); ++i) {
    const Parameter &pa = *a.params().all()[i], &pb = *b.params().all()[i];
    ASSERT_EQ(pa.name, pb.name);
    EXPECT_TRUE(BitwiseEqual(pa.value, pb.value)) << pa.name;
    EXPECT_EQ(pa.mult.init_std, pb.mult.init_std) << pa.name;
    EXPECT_EQ(pa.mult.forward, pb.mult.forward) << pa.name;
    EXPECT_EQ(pa.mult.lr, pb.mult.lr) << pa.name;
    EXPECT_EQ(pa.mult.weight_decay, pb.mult.weight_decay) << pa.name;
  }
  const Tensor tokens = RandomTokens(4, 33, 256, 17);
  const std::vector<double> la = Train(a, mup, tokens, 3), lb = Train(b, sp, tokens, 3);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "loss " << i;
  EXPECT_LT(la.back(), la.front());  // the steps did something
  for (size_t i = 0; i < a.params().all().size(); ++i)
    EXPECT_TRUE(BitwiseEqual(a.params().all()[i]->value, b.params().all()[i]->value))
        << a.params().all()[i]->name << " after 3 steps";
}

TEST(Parametrization, MupEqualsSpAtBaseWidthAdamW) {
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::ADAMW, false);
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::ADAMW, true);
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::ADAMW, false, /*heads_by_size=*/true);
}

TEST(Parametrization, MupEqualsSpAtBaseWidthSgd) {
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::SGD, false);
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::SGD, true);
  CheckMupEqualsSpAtBaseWidth(OptimizerSpec::SGD, false, /*heads_by_size=*/true);
}

// ---------------------------------------------------------------------------------------------
// (2) At m = 4 every parameter follows the muP table, for AdamW and SGD.

TEST(Parametrization, MupTableAtWidthMultiplier4) {
  for (auto opt : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    for (bool zero_readout : {false, true}) {
      SCOPED_TRACE(std::string(opt == OptimizerSpec::ADAMW ? "AdamW" : "SGD") +
                   (zero_readout ? " zero readout" : ""));
      ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 256, 64, opt);
      s.mutable_parametrization()->set_init_std(0.05);
      s.mutable_parametrization()->set_alpha_in(1.7);
      s.mutable_parametrization()->set_alpha_out(3.0);
      s.mutable_parametrization()->set_zero_init_readout(zero_readout);
      ASSERT_DOUBLE_EQ(WidthMultiplier(s), 4.0);
      CheckTable(s, 4.0);
    }
  }
}

TEST(Parametrization, MupTableTiedAndHeadSizeScaling) {
  ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 256, 64, OptimizerSpec::SGD);
  s.mutable_model()->set_tie_embeddings(true);
  CheckTable(s, 4.0);
  // Head-size scaling: the per-head parameters change class (RoleOf), under both optimizers.
  for (auto opt : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    ExperimentSpec h = BaseSpec(ParametrizationSpec::MUP, 256, 64, opt);
    h.mutable_model()->set_head_scaling(ModelSpec::HEAD_SIZE);
    h.mutable_model()->set_num_heads(4);
    ASSERT_TRUE(ValidateModelSpec(h).ok()) << ValidateModelSpec(h);
    CheckTable(h, 4.0);
  }
}

// ParameterCount (the memory check before allocating) and MatmulFlopsPerToken (MFU, sweep plans)
// count what the model builds.
TEST(Parametrization, ParameterCountIsTheModels) {
  for (const bool tied : {false, true})
    for (const int variant : {0, 1, 2}) {
      ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 128, 32, OptimizerSpec::ADAMW);
      ModelSpec& m = *s.mutable_model();
      m.set_tie_embeddings(tied);
      if (variant == 1) m.set_expand_v(3), m.set_value_heads_per_key_head(2), m.set_conv_size(3);
      if (variant == 2) m.set_head_scaling(ModelSpec::HEAD_SIZE), m.set_num_heads(3);
      ASSERT_TRUE(ValidateModelSpec(s).ok()) << ValidateModelSpec(s);
      LanguageModel model(s, DType::kF32);
      const ModelDims dims = *ResolveModelDims(m);
      EXPECT_EQ(ParameterCount(dims), double(model.params().NumElements()))
          << "tied " << tied << " variant " << variant;
      // The weights of matrix products: hidden matrices, gate projections and the head.
      double matmul = 0;
      for (const auto& p : model.params().all())
        if (p->cls == ParamClass::kHidden || p->cls == ParamClass::kGateReadout ||
            p->name == (tied ? "embedding" : "lm_head"))
          matmul += p->value.numel();
      EXPECT_EQ(MatmulFlopsPerToken(dims), 6 * matmul) << "tied " << tied << " variant " << variant;
    }
}

// Heads growing in size: muP's recurrence scale is (m/dk)^1/2, fla's dk^-1/2 times sqrt(m). With
// one layer and equal weights, the muP model's recurrent output is exactly sqrt(m) times the SP
// model's (the output is linear in the scale); growing in count, the two are equal.
TEST(Parametrization, RecurrenceScaleUnderHeadSizeGrowth) {
  EXPECT_DOUBLE_EQ(RecurrenceScale(64, false, 4.0), 1.0 / 8);  // count: fla's dk^-1/2
  EXPECT_DOUBLE_EQ(RecurrenceScale(64, true, 4.0), 0.25);       // size: dk_base = 16
  EXPECT_DOUBLE_EQ(RecurrenceScale(64, true, 1.0), 1.0 / 8);
  for (bool by_size : {false, true}) {
    SCOPED_TRACE(by_size ? "heads grow in size" : "heads grow in count");
    ExperimentSpec mup = BaseSpec(ParametrizationSpec::MUP, 256, 64, OptimizerSpec::SGD);
    ExperimentSpec sp = BaseSpec(ParametrizationSpec::SP, 256, 64, OptimizerSpec::SGD);
    for (ExperimentSpec* s : {&mup, &sp}) {
      s->mutable_model()->set_depth(1);
      if (by_size) {
        s->mutable_model()->set_head_scaling(ModelSpec::HEAD_SIZE);
        s->mutable_model()->set_num_heads(2);
      }
    }
    LanguageModel a(mup, DType::kF64), b(sp, DType::kF64);
    a.Initialize(5);
    for (size_t i = 0; i < a.params().all().size(); ++i)
      b.params().all()[i]->value.CopyFrom(a.params().all()[i]->value);
    const Tensor tokens = RandomTokens(2, 70, 256, 9);  // longer than a chunk
    Probes pa, pb;
    a.ForwardLoss(tokens, &pa);
    b.ForwardLoss(tokens, &pb);
    EXPECT_NEAR(pa["recurrent_out"], (by_size ? 2.0 : 1.0) * pb["recurrent_out"],
                1e-12 * pb["recurrent_out"]);
  }
}

// The logits are multiplied by alpha_out / m, tied or not (a tied head keeps the readout's
// multiplier on the shared matrix), and the embedding output by alpha_in.
TEST(Parametrization, LogitMultiplierIsAlphaOutOverM) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 256, 64, OptimizerSpec::ADAMW);
    s.mutable_model()->set_tie_embeddings(tied);
    s.mutable_parametrization()->set_alpha_out(3.0);
    CheckLogitMultiplier(s, 3.0 / 4.0);
    ExperimentSpec sp = BaseSpec(ParametrizationSpec::SP, 256, 64, OptimizerSpec::ADAMW);
    sp.mutable_model()->set_tie_embeddings(tied);
    sp.mutable_parametrization()->set_alpha_out(3.0);
    CheckLogitMultiplier(sp, 3.0);
  }
}

// ---------------------------------------------------------------------------------------------
// (3) Under SP every multiplier is width-free: lr 1, forward 1 (alpha_in / alpha_out on the
// embedding and head), weight decay 1 on matrices and 0 on vector-like ones, init sigma.

TEST(Parametrization, SpMultipliersIndependentOfWidth) {
  for (auto opt : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    for (int width : {64, 256, 512}) {
      SCOPED_TRACE("width " + std::to_string(width));
      ExperimentSpec s = BaseSpec(ParametrizationSpec::SP, width, 64, opt);
      s.mutable_parametrization()->set_alpha_in(1.7);
      s.mutable_parametrization()->set_alpha_out(3.0);
      ASSERT_EQ(WidthMultiplier(s), 1.0);
      CheckTable(s, 1.0);  // the muP table at m = 1
      LanguageModel model(s, DType::kF32);
      for (const auto& p : model.params().all()) {
        const Role role = RoleOf(p->name);
        EXPECT_EQ(p->mult.lr, 1.0) << p->name;
        EXPECT_EQ(p->mult.forward, role == Role::kInput    ? 1.7
                                   : role == Role::kOutput ? 3.0
                                                           : 1.0)
            << p->name;
        const bool matrix = role == Role::kInput || role == Role::kHidden || role == Role::kOutput;
        EXPECT_EQ(p->mult.weight_decay, matrix ? 1.0 : 0.0) << p->name;
        if (p->init == InitKind::kNormal) EXPECT_EQ(p->mult.init_std, 0.02) << p->name;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (4) The init that comes out: empirical std of the hidden matrices at width 256 under muP is
// sigma / 2 (m = 4), within 5%; embedding and head keep sigma; SP keeps sigma everywhere.

double EmpiricalStd(const Tensor& t) {
  double s = 0, ss = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.at(i), ss += t.at(i) * t.at(i);
  const double mean = s / t.numel();
  return std::sqrt(ss / t.numel() - mean * mean);
}

TEST(Parametrization, InitStdMeasured) {
  // Relative. The smallest matrices checked (a_proj, b_proj: [12, 256]) have a sampling error of
  // the std of ~1/sqrt(2 * 3072) = 1.3%; the others are far larger.
  constexpr double kTol = 0.05;
  for (auto kind : {ParametrizationSpec::MUP, ParametrizationSpec::SP}) {
    ExperimentSpec s = BaseSpec(kind, 256, 64, OptimizerSpec::ADAMW);
    const double sigma = 0.02;
    LanguageModel model(s, DType::kF32);
    model.Initialize(5);
    for (const auto& p : model.params().all()) {
      const Role role = RoleOf(p->name);
      const double got = EmpiricalStd(p->value);
      if (role == Role::kHidden) {
        const double want = kind == ParametrizationSpec::MUP ? sigma / 2 : sigma;
        EXPECT_NEAR(got / want, 1.0, kTol) << p->name << " std " << got;
      } else if (role == Role::kInput || role == Role::kOutput) {
        EXPECT_NEAR(got / sigma, 1.0, kTol) << p->name << " std " << got;
      }
    }
    // The named case of the brief: an MLP matrix at width 256.
    const double up = EmpiricalStd(model.params().Find("layers.0.mlp.up_proj")->value);
    EXPECT_NEAR(up, kind == ParametrizationSpec::MUP ? 0.01 : 0.02,
                kTol * (kind == ParametrizationSpec::MUP ? 0.01 : 0.02));
  }
}

// The gate parameters follow shared/docs/gated-delta-rule.md: A = exp(A_log) in (0, 16],
// softplus(dt_bias) in [1e-3, 0.1]; norm weights are ones.
TEST(Parametrization, GateAndNormInit) {
  ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 256, 64, OptimizerSpec::ADAMW);
  LanguageModel model(s, DType::kF64);
  model.Initialize(9);
  for (const auto& p : model.params().all()) {
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      const double x = p->value.at(i);
      if (p->init == InitKind::kALog) {
        EXPECT_GT(std::exp(x), 0.0) << p->name;
        EXPECT_LE(std::exp(x), 16.0 * (1 + 1e-12)) << p->name;
      } else if (p->init == InitKind::kDtBias) {
        const double dt = std::log1p(std::exp(x));
        EXPECT_GE(dt, 1e-3 * (1 - 1e-9)) << p->name;
        EXPECT_LE(dt, 0.1 * (1 + 1e-9)) << p->name;
      } else if (p->init == InitKind::kOnes) {
        EXPECT_EQ(x, 1.0) << p->name;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (5) Tensor-parallel shards: ranks {0, 2} and {1, 2} concatenate to the unsharded tensor along
// the shard dimension, and the multipliers come from global sizes (equal on every layout).

Tensor Concat(const Tensor& a, const Tensor& b, ShardDim dim) {
  const int64_t rows = a.dim(0), cols = a.numel() / rows;
  if (dim == ShardDim::kRows) {
    Shape s = a.shape();
    s[0] *= 2;
    Tensor out = Tensor::Empty(s, a.dtype());
    for (int64_t i = 0; i < a.numel(); ++i) out.set(i, a.at(i));
    for (int64_t i = 0; i < b.numel(); ++i) out.set(a.numel() + i, b.at(i));
    return out;
  }
  Tensor out = Tensor::Empty({rows, 2 * cols}, a.dtype());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      out.set(r * 2 * cols + c, a.at(r * cols + c));
      out.set(r * 2 * cols + cols + c, b.at(r * cols + c));
    }
  return out;
}

TEST(Parametrization, ShardedInitConcatenatesToFull) {
  ExperimentSpec s = BaseSpec(ParametrizationSpec::MUP, 128, 64, OptimizerSpec::ADAMW);
  s.mutable_parallel()->set_tensor_parallel(2);
  ASSERT_TRUE(ValidateModelSpec(s).ok()) << ValidateModelSpec(s);
  LanguageModel full(s, DType::kF32, TensorParallel{0, 1});
  LanguageModel r0(s, DType::kF32, TensorParallel{0, 2});
  LanguageModel r1(s, DType::kF32, TensorParallel{1, 2});
  for (LanguageModel* m : {&full, &r0, &r1}) m->Initialize(42);
  // The named cases: a column-parallel (row-sharded) and a row-parallel (column-sharded) matrix.
  EXPECT_EQ(full.params().Find("layers.0.attn.q_proj")->shard, ShardDim::kRows);
  EXPECT_EQ(full.params().Find("layers.0.attn.o_proj")->shard, ShardDim::kCols);
  EXPECT_EQ(r0.params().Find("layers.0.attn.q_proj")->value.shape(), (Shape{48, 128}));
  EXPECT_EQ(r1.params().Find("layers.0.attn.o_proj")->value.shape(), (Shape{128, 96}));
  int sharded = 0;
  for (size_t i = 0; i < full.params().all().size(); ++i) {
    const Parameter &f = *full.params().all()[i], &a = *r0.params().all()[i],
                    &b = *r1.params().all()[i];
    SCOPED_TRACE(f.name);
    ASSERT_EQ(f.name, a.name);
    ASSERT_EQ(f.name, b.name);
    for (const Parameter* p : {&a, &b}) {
      EXPECT_EQ(p->global_shape, f.global_shape);
      EXPECT_EQ(p->mult.init_std, f.mult.init_std);
      EXPECT_EQ(p->mult.forward, f.mult.forward);
      EXPECT_EQ(p->mult.lr, f.mult.lr);
      EXPECT_EQ(p->mult.weight_decay, f.mult.weight_decay);
    }
    if (f.shard == ShardDim::kReplicated) {
      EXPECT_TRUE(BitwiseEqual(a.value, f.value));
      EXPECT_TRUE(BitwiseEqual(b.value, f.value));
    } else {
      ++sharded;
      EXPECT_EQ(a.value.numel() * 2, f.value.numel());
      EXPECT_TRUE(BitwiseEqual(Concat(a.value, b.value, f.shard), f.value));
      EXPECT_FALSE(BitwiseEqual(a.value, b.value));
    }
  }
  EXPECT_GT(sharded, 20);
  // muP multipliers of the shards: m = 2 from the global width, not 1 from a shard's 64 columns.
  EXPECT_DOUBLE_EQ(r1.params().Find("layers.0.attn.o_proj")->mult.lr, 0.5);
  EXPECT_DOUBLE_EQ(r1.params().Find("layers.0.attn.q_proj")->mult.init_std, 0.02 / std::sqrt(2.0));
}

}  // namespace
}  // namespace gdn
