// The optimizer layer (model/optimizer.h): the learning-rate schedule, the gradient norm and
// clipping (its factor applied inside the update), AdamW and SGD-with-momentum updates against hand-written references (with
// per-parameter learning-rate and weight-decay multipliers), and short training runs that must
// reduce the loss of a small model on a fixed batch.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/config.h"
#include "model/gradient_reducer.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "runtime/spec.h"

namespace gdn {
namespace {

OptimizerSpec Schedule(OptimizerSpec::Decay decay, int warmup, double lr, double floor) {
  ExperimentSpec s;
  FillDefaults(&s);
  OptimizerSpec o = s.optimizer();
  o.set_decay(decay);
  o.set_warmup_steps(warmup);
  o.set_lr(lr);
  o.set_min_lr_ratio(floor);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Schedule.

TEST(Schedule, WarmupIsALinearRampToLr) {
  for (auto decay : {OptimizerSpec::COSINE, OptimizerSpec::LINEAR, OptimizerSpec::CONSTANT}) {
    const OptimizerSpec o = Schedule(decay, 10, 0.02, 0.1);
    for (int step = 0; step < 10; ++step)
      EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, step, 100), 0.02 * (step + 1) / 10) << step;
    EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 10, 100), 0.02);  // first step after warmup
  }
}

TEST(Schedule, CosineEndpointsAndMidpoint) {
  const OptimizerSpec o = Schedule(OptimizerSpec::COSINE, 10, 0.02, 0.1);
  const int total = 111;  // decay steps 10..110: progress = (step - 10) / 100
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 10, total), 0.02);
  EXPECT_NEAR(ScheduledLearningRate(o, 60, total), 0.02 * (0.1 + 0.9 * 0.5), 1e-15);
  EXPECT_NEAR(ScheduledLearningRate(o, 35, total),
              0.02 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25))), 1e-15);
  EXPECT_NEAR(ScheduledLearningRate(o, total - 1, total), 0.1 * 0.02, 1e-15);  // last step
  EXPECT_NEAR(ScheduledLearningRate(o, total + 5, total), 0.1 * 0.02, 1e-15);  // stays there
  // Monotone non-increasing after warmup.
  for (int step = 11; step < total; ++step)
    EXPECT_LE(ScheduledLearningRate(o, step, total), ScheduledLearningRate(o, step - 1, total));
  // No warmup: step 0 gets the full rate.
  const OptimizerSpec n = Schedule(OptimizerSpec::COSINE, 0, 0.02, 0.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(n, 0, 50), 0.02);
  EXPECT_NEAR(ScheduledLearningRate(n, 49, 50), 0.0, 1e-18);
}

TEST(Schedule, Linear) {
  const OptimizerSpec o = Schedule(OptimizerSpec::LINEAR, 4, 1.0, 0.2);
  const int total = 105;  // progress = (step - 4) / 100
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 4, total), 1.0);
  EXPECT_NEAR(ScheduledLearningRate(o, 29, total), 1.0 - 0.8 * 0.25, 1e-15);
  EXPECT_NEAR(ScheduledLearningRate(o, 54, total), 1.0 - 0.8 * 0.5, 1e-15);
  EXPECT_NEAR(ScheduledLearningRate(o, total - 1, total), 0.2, 1e-15);
}

TEST(Schedule, Constant) {
  const OptimizerSpec o = Schedule(OptimizerSpec::CONSTANT, 3, 0.5, 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 0, 20), 0.5 / 3);
  for (int step = 3; step < 25; ++step) EXPECT_EQ(ScheduledLearningRate(o, step, 20), 0.5);
}

// ---------------------------------------------------------------------------------------------
// Gradient norm and clipping.

ParameterSet MakeParams(DType dtype, std::vector<double> lr_mults = {1.0, 0.5, 2.0},
                        std::vector<double> wd_mults = {1.0, 2.0, 0.0}) {
  ParameterSet ps;
  const std::vector<Shape> shapes = {{3, 4}, {5}, {2, 3}};
  std::mt19937_64 gen(1);
  std::normal_distribution<double> normal;
  for (size_t i = 0; i < shapes.size(); ++i) {
    ParamMultipliers m;
    m.lr = lr_mults[i];
    m.weight_decay = wd_mults[i];
    Parameter* p = ps.Add("p" + std::to_string(i), shapes[i], ParamClass::kHidden,
                          InitKind::kNormal, ShardDim::kReplicated, m, dtype, TensorParallel{});
    for (int64_t j = 0; j < p->value.numel(); ++j) {
      p->value.set(j, normal(gen));
      p->grad.set(j, normal(gen));
    }
  }
  return ps;
}

double HandNorm(const ParameterSet& ps) {
  double ss = 0;
  for (const auto& p : ps.all())
    for (int64_t i = 0; i < p->grad.numel(); ++i) ss += p->grad.at(i) * p->grad.at(i);
  return std::sqrt(ss);
}

// The trainer's norm and clipping (model/gradient_reducer.h) on one rank.
struct OneRank {
  explicit OneRank(ParameterSet& ps)
      : comm(MakeSingleRankCommunicator()), reducer(ps, {}, nullptr, comm.get(), {}) {}
  std::unique_ptr<Communicator> comm;
  GradientReducer reducer;
};

TEST(GradNorm, IsSqrtOfSumOfSquares) {
  ParameterSet ps = MakeParams(DType::kF64);
  OneRank rs(ps);
  EXPECT_NEAR(rs.reducer.GradNorm(), HandNorm(ps), 1e-14 * HandNorm(ps));
  ParameterSet pf = MakeParams(DType::kF32);
  OneRank rf(pf);
  EXPECT_NEAR(rf.reducer.GradNorm(), HandNorm(pf), 1e-6 * HandNorm(pf));
  // A known value: one gradient (3, 4) and zeros elsewhere -> 5.
  for (const auto& p : ps.all()) p->grad.SetZero();
  ps.all()[0]->grad.set(0, 3.0);
  ps.all()[2]->grad.set(5, -4.0);
  EXPECT_DOUBLE_EQ(rs.reducer.GradNorm(), 5.0);
}

TEST(ClipScale, IsMaxNormOverNormAboveTheMaxOnly) {
  EXPECT_DOUBLE_EQ(ClipScale(4.0, 1.0), 0.25);
  EXPECT_EQ(ClipScale(1.0, 1.5), 1.0);   // below the max: untouched
  EXPECT_EQ(ClipScale(1.0, 1.0), 1.0);   // equal to it: untouched
  EXPECT_EQ(ClipScale(10.0, 0.0), 1.0);  // 0 turns clipping off
  // Gradients taken times the factor have the max norm.
  ParameterSet ps = MakeParams(DType::kF64);
  OneRank r(ps);
  const double norm = r.reducer.GradNorm();
  ASSERT_GT(norm, 1.0);
  ops::Scale(r.reducer.flat_grads(), ClipScale(norm, 1.0));
  EXPECT_NEAR(r.reducer.GradNorm(), 1.0, 1e-14);
}

// Clipping inside the update: a step given the factor leaves the values and state that scaling
// the gradients first and then stepping leaves, bit for bit, for AdamW and SGD, with the
// trainer's reducer (the multi-tensor update, which leaves the gradients as they are) and
// without one.
TEST(ClipScale, StepWithTheFactorEqualsStepOnScaledGradients) {
  for (auto kind : {OptimizerSpec::ADAMW, OptimizerSpec::SGD})
    for (const bool with_reducer : {true, false}) {
      SCOPED_TRACE(std::to_string(kind) + (with_reducer ? " flat" : " per parameter"));
      ParameterSet a = MakeParams(DType::kF32), b = MakeParams(DType::kF32);
      std::unique_ptr<OneRank> ra, rb;
      if (with_reducer) ra = std::make_unique<OneRank>(a), rb = std::make_unique<OneRank>(b);
      OptimizerSpec spec = Schedule(OptimizerSpec::CONSTANT, 0, 0.01, 0.0);
      spec.set_kind(kind);
      spec.set_weight_decay(0.1);
      Optimizer oa(spec, a, ra ? &ra->reducer : nullptr), ob(spec, b, rb ? &rb->reducer : nullptr);
      std::vector<Tensor> grads;
      for (const auto& p : a.all()) grads.push_back(p->grad.Clone());
      const double scale = 0.37;
      for (int step = 1; step <= 2; ++step) {
        oa.Step(step, 0.01, scale);
        for (const auto& p : b.all()) ops::Scale(p->grad, scale);
        ob.Step(step, 0.01);
        for (size_t k = 0; k < grads.size(); ++k) {
          if (with_reducer)
            for (int64_t i = 0; i < grads[k].numel(); ++i)
              ASSERT_EQ(a.all()[k]->grad.at(i), grads[k].at(i));
          a.all()[k]->grad.CopyFrom(grads[k]);  // the same gradients again for step 2
          b.all()[k]->grad.CopyFrom(grads[k]);
        }
      }
      for (size_t k = 0; k < a.all().size(); ++k)
        for (int64_t i = 0; i < a.all()[k]->value.numel(); ++i)
          ASSERT_EQ(a.all()[k]->value.at(i), b.all()[k]->value.at(i));
      const std::vector<Tensor> sa = oa.FullState(), sb = ob.FullState();
      ASSERT_EQ(sa.size(), sb.size());
      for (size_t k = 0; k < sa.size(); ++k)
        for (int64_t i = 0; i < sa[k].numel(); ++i) ASSERT_EQ(sa[k].at(i), sb[k].at(i));
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW and SGD against hand-written references, with per-parameter multipliers.

OptimizerSpec OptSpec(OptimizerSpec::Kind kind) {
  ExperimentSpec s;
  FillDefaults(&s);
  OptimizerSpec o = s.optimizer();
  o.set_kind(kind);
  o.set_beta1(0.8);
  o.set_beta2(0.9);
  o.set_eps(1e-6);
  o.set_weight_decay(0.1);
  o.set_momentum(0.7);
  return o;
}

TEST(Optimizer, AdamWMatchesReference) {
  const OptimizerSpec o = OptSpec(OptimizerSpec::ADAMW);
  ParameterSet ps = MakeParams(DType::kF64);  // lr multipliers 1, 0.5, 2; wd multipliers 1, 2, 0
  // Reference state, in double.
  std::vector<std::vector<double>> x, m, v;
  for (const auto& p : ps.all()) {
    x.emplace_back(p->value.numel());
    for (int64_t i = 0; i < p->value.numel(); ++i) x.back()[i] = p->value.at(i);
    m.emplace_back(p->value.numel(), 0.0);
    v.emplace_back(p->value.numel(), 0.0);
  }
  Optimizer opt(o, ps);
  EXPECT_EQ(opt.FullState().size(), 2 * ps.all().size());
  std::mt19937_64 gen(5);
  std::normal_distribution<double> normal;
  const double lrs[] = {1e-2, 3e-2, 5e-3, 2e-2};
  for (int t = 1; t <= 4; ++t) {
    const double lr = lrs[t - 1];
    for (size_t k = 0; k < ps.all().size(); ++k) {
      Parameter& p = *ps.all()[k];
      const double plr = lr * p.mult.lr, wd = o.weight_decay() * p.mult.weight_decay;
      for (int64_t i = 0; i < p.grad.numel(); ++i) {
        const double g = normal(gen) * (k + 1);
        p.grad.set(i, g);
        m[k][i] = o.beta1() * m[k][i] + (1 - o.beta1()) * g;
        v[k][i] = o.beta2() * v[k][i] + (1 - o.beta2()) * g * g;
        const double mhat = m[k][i] / (1 - std::pow(o.beta1(), t));
        const double vhat = v[k][i] / (1 - std::pow(o.beta2(), t));
        x[k][i] -= plr * (mhat / (std::sqrt(vhat) + o.eps()) + wd * x[k][i]);
      }
    }
    opt.Step(t, lr);
    for (size_t k = 0; k < ps.all().size(); ++k)
      for (int64_t i = 0; i < ps.all()[k]->value.numel(); ++i)
        ASSERT_NEAR(ps.all()[k]->value.at(i), x[k][i], 1e-13)
            << ps.all()[k]->name << "[" << i << "] step " << t;
  }
  // The multiplier matters: a 0.5-multiplier parameter's first Adam step is half as long.
  ParameterSet a = MakeParams(DType::kF64, {1.0, 1.0, 1.0}, {0, 0, 0});
  ParameterSet b = MakeParams(DType::kF64, {0.5, 0.5, 0.5}, {0, 0, 0});
  std::vector<Tensor> x0;
  for (const auto& p : a.all()) x0.push_back(p->value.Clone());
  Optimizer oa(o, a), ob(o, b);
  oa.Step(1, 1e-2);
  ob.Step(1, 1e-2);
  for (size_t k = 0; k < x0.size(); ++k)
    for (int64_t i = 0; i < x0[k].numel(); ++i)
      EXPECT_NEAR(b.all()[k]->value.at(i) - x0[k].at(i),
                  0.5 * (a.all()[k]->value.at(i) - x0[k].at(i)), 1e-15);
}

TEST(Optimizer, SgdMomentumMatchesReference) {
  const OptimizerSpec o = OptSpec(OptimizerSpec::SGD);
  ParameterSet ps = MakeParams(DType::kF64);
  std::vector<std::vector<double>> x, buf;
  for (const auto& p : ps.all()) {
    x.emplace_back(p->value.numel());
    for (int64_t i = 0; i < p->value.numel(); ++i) x.back()[i] = p->value.at(i);
    buf.emplace_back(p->value.numel(), 0.0);
  }
  Optimizer opt(o, ps);
  EXPECT_EQ(opt.FullState().size(), ps.all().size());
  std::mt19937_64 gen(6);
  std::normal_distribution<double> normal;
  const double lrs[] = {0.1, 0.3, 0.05, 0.2};
  for (int t = 1; t <= 4; ++t) {
    const double lr = lrs[t - 1];
    for (size_t k = 0; k < ps.all().size(); ++k) {
      Parameter& p = *ps.all()[k];
      const double plr = lr * p.mult.lr, wd = o.weight_decay() * p.mult.weight_decay;
      for (int64_t i = 0; i < p.grad.numel(); ++i) {
        const double g = normal(gen);
        p.grad.set(i, g);
        // Weight decay as L2 on the gradient, then heavy-ball momentum.
        buf[k][i] = o.momentum() * buf[k][i] + (g + wd * x[k][i]);
        x[k][i] -= plr * buf[k][i];
      }
    }
    opt.Step(t, lr);
    for (size_t k = 0; k < ps.all().size(); ++k)
      for (int64_t i = 0; i < ps.all()[k]->value.numel(); ++i)
        ASSERT_NEAR(ps.all()[k]->value.at(i), x[k][i], 1e-13)
            << ps.all()[k]->name << "[" << i << "] step " << t;
  }
}

// float32 parameters take the same update (to float32 rounding).
TEST(Optimizer, Float32MatchesFloat64) {
  for (auto kind : {OptimizerSpec::ADAMW, OptimizerSpec::SGD}) {
    const OptimizerSpec o = OptSpec(kind);
    ParameterSet a = MakeParams(DType::kF64), b = MakeParams(DType::kF32);
    for (size_t k = 0; k < a.all().size(); ++k)  // same starting values in both
      for (int64_t i = 0; i < a.all()[k]->value.numel(); ++i) {
        a.all()[k]->value.set(i, b.all()[k]->value.at(i));
        a.all()[k]->grad.set(i, b.all()[k]->grad.at(i));
      }
    Optimizer oa(o, a), ob(o, b);
    for (int t = 1; t <= 3; ++t) {
      oa.Step(t, 1e-2);
      ob.Step(t, 1e-2);
    }
    for (size_t k = 0; k < a.all().size(); ++k)
      for (int64_t i = 0; i < a.all()[k]->value.numel(); ++i)
        EXPECT_NEAR(a.all()[k]->value.at(i), b.all()[k]->value.at(i),
                    1e-5 * (1 + std::abs(a.all()[k]->value.at(i))));
  }
}

// ---------------------------------------------------------------------------------------------
// Training on a fixed batch: 30 steps must cut the loss of a small float32 model clearly.

// One OpenMP thread for the duration of a test: the model here is tiny, and on a busy 2-core
// machine the kernels' parallel regions (next to OpenBLAS's own threads) can slow a step from
// ~2 ms to ~300 ms.
struct SingleThread {
  int saved = omp_get_max_threads();
  SingleThread() { omp_set_num_threads(1); }
  ~SingleThread() { omp_set_num_threads(saved); }
};

std::vector<double> TrainFixedBatch(OptimizerSpec::Kind kind, double lr, int steps) {
  SingleThread one;
  ExperimentSpec s;
  FillDefaults(&s);
  s.mutable_model()->set_vocab_size(32);
  s.mutable_model()->set_width(32);
  s.mutable_model()->set_depth(2);
  s.mutable_model()->set_head_dim(8);
  s.mutable_model()->set_chunk_size(8);
  s.mutable_parametrization()->set_kind(ParametrizationSpec::MUP);
  s.mutable_parametrization()->set_base_width(32);
  s.mutable_optimizer()->set_kind(kind);
  s.mutable_optimizer()->set_lr(lr);
  s.mutable_optimizer()->set_warmup_steps(3);
  EXPECT_TRUE(ValidateModelSpec(s).ok()) << ValidateModelSpec(s);
  LanguageModel model(s, DType::kF32);
  model.Initialize(0);
  Tensor tokens = Tensor::Empty({4, 33}, DType::kI32);
  std::mt19937_64 gen(3);
  std::uniform_int_distribution<int> dist(0, 31);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = dist(gen);
  OneRank r(model.params());
  Optimizer opt(s.optimizer(), model.params(), &r.reducer);
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    r.reducer.ZeroGrads();
    losses.push_back(model.ForwardBackward(tokens));
    opt.Step(step + 1, ScheduledLearningRate(s.optimizer(), step, steps),
             ClipScale(r.reducer.GradNorm(), s.optimizer().grad_clip()));
  }
  losses.push_back(model.ForwardLoss(tokens));
  return losses;
}

TEST(Optimizer, TrainingReducesLossAdamW) {
  const std::vector<double> l = TrainFixedBatch(OptimizerSpec::ADAMW, 1e-2, 30);
  std::printf("[train] AdamW lr 1e-2: loss %.4f -> %.4f\n", l.front(), l.back());
  EXPECT_NEAR(l.front(), std::log(32.0), 0.1);  // starts near uniform
  EXPECT_LT(l.back(), 0.25 * l.front());        // memorises the fixed batch (observed 3.47 -> 0.17)
}

TEST(Optimizer, TrainingReducesLossSgd) {
  const std::vector<double> l = TrainFixedBatch(OptimizerSpec::SGD, 0.5, 30);
  std::printf("[train] SGD lr 0.5: loss %.4f -> %.4f\n", l.front(), l.back());
  EXPECT_NEAR(l.front(), std::log(32.0), 0.1);
  EXPECT_LT(l.back(), 0.25 * l.front());  // observed 0.045-0.065 (3.47 -> ~0.05)
}

}  // namespace
}  // namespace gdn
