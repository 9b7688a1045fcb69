#include "model/gated_deltanet.h"

#include <cmath>

#include "kernels/ops.h"

namespace gdn {

namespace {
constexpr double kQkNormEps = 1e-6;  // the L2 norm of q and k heads, as the public models use
}  // namespace

GatedDeltaNetMixer::GatedDeltaNetMixer(const std::string& prefix, const LayerBuilder& builder)
    : b_(builder) {
  const ModelDims& d = b_.dims;
  const int t = b_.tp.size;
  heads_ = d.heads / t;
  value_heads_ = d.value_heads / t;
  key_dim_ = d.key_dim / t;
  value_dim_ = d.value_dim / t;
  recurrence_scale_ = RecurrenceScale(d.dk, d.heads_grow_in_size, b_.width_mult);
  // Which dimensions grow with the width decides the muP class (model/parametrization.h):
  // per-head quantities (gates, A_log, dt_bias) are fixed in number when heads grow in size.
  auto col = [&](const char* n, int64_t rows, ParamClass cls = ParamClass::kHidden) {
    return b_.Add(prefix + n, {rows, d.width}, cls, InitKind::kNormal, ShardDim::kRows);
  };
  const ParamClass gate_proj =
      d.heads_grow_in_size ? ParamClass::kGateReadout : ParamClass::kHidden;
  const ParamClass per_head = d.heads_grow_in_size ? ParamClass::kFixed : ParamClass::kVector;
  wq_ = col("q_proj", d.key_dim);
  wk_ = col("k_proj", d.key_dim);
  wv_ = col("v_proj", d.value_dim);
  wa_ = col("a_proj", d.value_heads, gate_proj);
  wb_ = col("b_proj", d.value_heads, gate_proj);
  wg_ = col("g_proj", d.value_dim);
  auto conv = [&](const char* n, int64_t channels) {
    return b_.Add(prefix + n, {channels, d.conv_size}, ParamClass::kVector, InitKind::kNormal,
                  ShardDim::kRows);
  };
  conv_q_ = conv("q_conv", d.key_dim);
  conv_k_ = conv("k_conv", d.key_dim);
  conv_v_ = conv("v_conv", d.value_dim);
  a_log_ = b_.Add(prefix + "A_log", {d.value_heads}, per_head, InitKind::kALog, ShardDim::kRows);
  dt_bias_ =
      b_.Add(prefix + "dt_bias", {d.value_heads}, per_head, InitKind::kDtBias, ShardDim::kRows);
  o_norm_ = b_.Add(prefix + "o_norm", {d.dv},
                   d.heads_grow_in_size ? ParamClass::kVector : ParamClass::kFixed, InitKind::kOnes,
                   ShardDim::kReplicated);
  o_norm_->tp_partial_grad = true;
  wo_ = b_.Add(prefix + "o_proj", {d.width, d.value_dim}, ParamClass::kHidden, InitKind::kNormal,
               ShardDim::kCols);
  b_.KeepOperand(wo_);
  if (b_.OperandsRounded()) {
    const ProjectionColumns pc = Projections();
    stacked_operand_ = b_.OperandEmpty({pc.stride, wq_->value.dim(1)});
    stacked_operand_.SetZero();  // the rows between the weights stay zero
    for (size_t i = 0; i < pc.weights.size(); ++i)
      b_.KeepOperand(pc.weights[i], stacked_operand_.Rows(pc.first[i], pc.end(i)));
  }
}

Tensor GatedDeltaNetMixer::Forward(const Tensor& x, int64_t B, int64_t T, Probes* probes,
                                   bool save_recurrence) {
  const ModelDims& d = b_.dims;
  const int64_t N = B * T;
  B_ = B;
  T_ = T;
  // x feeds products only: kept in its matrix-product form (bf16 in the bf16 mode). Its six
  // projections are one product into the columns of p_ (Projections()).
  x_ = ops::MatmulOperand(x);
  const ProjectionColumns pc = Projections();
  p_ = b_.OperandEmpty({N, pc.stride});
  ops::Matmul(x_, false, StackedProjectionWeights(pc), true, p_);
  const std::vector<Tensor> cols = pc.Of(p_);
  qp_ = cols[0], kp_ = cols[1], vp_ = cols[2], g_ = cols[3], a_ = cols[4], bb_ = cols[5];
  in_ = MakeRecurrenceInputs(probes);
  const RecurrenceInputs& in = in_;

  gamma_ = b_.Empty({N, value_heads_});
  beta_ = b_.Empty({N, value_heads_});
  ops::GatesForward(a_, bb_, a_log_->value, dt_bias_->value, d.beta_scale, gamma_, beta_);

  // The recurrence's inputs and output are [stored] / [operand] tensors (bf16 in the bf16 mode,
  // its arithmetic float32), float32 where probes measure them.
  o_ = probes ? b_.Empty({N, value_dim_}) : b_.OperandEmpty({N, value_dim_});
  Tensor state;
  if (probes) state = b_.Empty({B, value_heads_, d.dk, d.dv});
  const Tensor q = in.qn.View({B, T, heads_, d.dk}), v = in.vc.View({B, T, value_heads_, d.dv});
  const int64_t saved_floats = ops::GatedDeltaRuleSavedFloats(q, v, d.chunk);
  recurrence_saved_ = save_recurrence && saved_floats > 0
                          ? Tensor::Empty({saved_floats}, DType::kF32, b_.device)
                          : Tensor();
  ops::GatedDeltaRuleForward(q, in.kn.View({B, T, heads_, d.dk}), v, gamma_, beta_,
                             recurrence_scale_, d.chunk, o_.View({B, T, value_heads_, d.dv}),
                             state, recurrence_saved_);

  // Probes measure y: then it stays float32 (MeanAbs takes float tensors).
  o_rstd_ = b_.Empty({N * value_heads_});
  const Tensor y = OutputNorm(probes != nullptr);
  Tensor out = LinearForward(b_, y, *wo_);

  if (probes) {
    Probes& p = *probes;
    double alpha = 0;
    const Tensor gamma = gamma_.To(Device::kCPU);
    for (int64_t i = 0; i < gamma.numel(); ++i) alpha += std::exp(gamma.at(i));
    p["alpha"] += alpha / gamma_.numel();
    p["beta"] += ops::MeanAbs(beta_);
    p["recurrent_out"] += ops::MeanAbs(o_);
    p["head_norm_out"] += ops::MeanAbs(y);
    p["mixer_out"] += ops::MeanAbs(out);
    // |S|_F / sqrt(dk dv): the RMS coordinate of the final state, averaged over heads.
    p["state"] += std::sqrt(ops::SumSquares(state) / state.numel());
  }
  return out;
}

Tensor GatedDeltaNetMixer::OutputNorm(bool float32) const {
  const Shape shape{B_ * T_, value_dim_};
  Tensor y = float32 ? b_.Empty(shape) : b_.OperandEmpty(shape);
  ops::GatedRmsNormForward(o_, g_, o_norm_->value, b_.dims.dv, b_.dims.norm_eps, y, o_rstd_);
  return y;
}

GatedDeltaNetMixer::RecurrenceInputs GatedDeltaNetMixer::MakeRecurrenceInputs(
    Probes* probes) const {
  const ModelDims& d = b_.dims;
  const int64_t N = B_ * T_;
  // The recurrence's inputs: bf16 in the bf16 mode (as its output, Forward), float32 where probes
  // measure them.
  auto empty = [&](int64_t cols) {
    return probes ? b_.Empty({N, cols}) : b_.OperandEmpty({N, cols});
  };
  auto conv = [&](const Tensor& x, const Parameter& w) {
    Tensor out = empty(x.dim(1));
    ops::CausalConvSiluForward(BySequence(x), w.value, BySequence(out));
    return out;
  };
  RecurrenceInputs in;
  in.vc = conv(vp_, *conv_v_);
  in.qn = empty(key_dim_);
  in.kn = empty(key_dim_);
  in.q_rn = b_.Empty({N * heads_});
  in.k_rn = b_.Empty({N * heads_});
  if (probes) {  // the coordinate check measures the conv's outputs: the two ops apart
    const Tensor qc = conv(qp_, *conv_q_), kc = conv(kp_, *conv_k_);
    ops::L2NormHeadsForward(qc, d.dk, kQkNormEps, in.qn, in.q_rn);
    ops::L2NormHeadsForward(kc, d.dk, kQkNormEps, in.kn, in.k_rn);
    (*probes)["q_conv"] += ops::MeanAbs(qc);
    (*probes)["k_conv"] += ops::MeanAbs(kc);
    (*probes)["v_conv"] += ops::MeanAbs(in.vc);
    return in;
  }
  ops::CausalConvSiluL2NormForward(BySequence(qp_), conv_q_->value, d.dk, kQkNormEps,
                                   BySequence(in.qn), in.q_rn);
  ops::CausalConvSiluL2NormForward(BySequence(kp_), conv_k_->value, d.dk, kQkNormEps,
                                   BySequence(in.kn), in.k_rn);
  return in;
}

Tensor GatedDeltaNetMixer::BySequence(const Tensor& t) const {
  return t.View({B_, T_, t.dim(1)});
}

GatedDeltaNetMixer::State GatedDeltaNetMixer::NewState(int64_t B) const {
  const int64_t K = b_.dims.conv_size;
  State s;
  s.q_window = Tensor::Zeros({B, K - 1, key_dim_}, b_.dtype);
  s.k_window = Tensor::Zeros({B, K - 1, key_dim_}, b_.dtype);
  s.v_window = Tensor::Zeros({B, K - 1, value_dim_}, b_.dtype);
  s.recurrent = Tensor::Zeros({B, value_heads_, b_.dims.dk, b_.dims.dv}, b_.dtype);
  return s;
}

Tensor GatedDeltaNetMixer::ForwardStep(const Tensor& x, State& state) const {
  const ModelDims& d = b_.dims;
  const int64_t B = x.dim(0);
  auto conv = [&](const Parameter& proj, const Parameter& w, const Tensor& window) {
    Tensor p = LinearForward(b_, x, proj);
    Tensor out = b_.Empty(p.shape());
    ops::CausalConvSiluStep(p, w.value, window, out);
    return out;
  };
  Tensor qc = conv(*wq_, *conv_q_, state.q_window);
  Tensor kc = conv(*wk_, *conv_k_, state.k_window);
  Tensor vc = conv(*wv_, *conv_v_, state.v_window);
  Tensor a = LinearForward(b_, x, *wa_), bb = LinearForward(b_, x, *wb_);
  Tensor g = LinearForward(b_, x, *wg_);
  Tensor qn = b_.Empty({B, key_dim_}), kn = b_.Empty({B, key_dim_});
  Tensor rn = b_.Empty({B * heads_});
  ops::L2NormHeadsForward(qc, d.dk, kQkNormEps, qn, rn);
  ops::L2NormHeadsForward(kc, d.dk, kQkNormEps, kn, rn);
  Tensor gamma = b_.Empty({B, value_heads_}), beta = b_.Empty({B, value_heads_});
  ops::GatesForward(a, bb, a_log_->value, dt_bias_->value, d.beta_scale, gamma, beta);
  Tensor o = b_.Empty({B, value_dim_});
  ops::GatedDeltaRuleStep(qn.View({B, heads_, d.dk}), kn.View({B, heads_, d.dk}),
                          vc.View({B, value_heads_, d.dv}), gamma, beta,
                          recurrence_scale_, state.recurrent,
                          o.View({B, value_heads_, d.dv}));
  Tensor y = b_.Empty({B, value_dim_}), rstd = b_.Empty({B * value_heads_});
  ops::GatedRmsNormForward(o, g, o_norm_->value, d.dv, d.norm_eps, y, rstd);
  return LinearForward(b_, y, *wo_);
}

void GatedDeltaNetMixer::ReleaseSaved() {
  for (Tensor* t : {&x_, &p_, &qp_, &kp_, &vp_, &a_, &bb_, &g_, &gamma_, &beta_, &o_, &o_rstd_,
                    &recurrence_saved_})
    *t = Tensor();
  in_ = RecurrenceInputs();
}

GatedDeltaNetMixer::ProjectionColumns GatedDeltaNetMixer::Projections() const {
  ProjectionColumns p;
  p.weights = {wq_, wk_, wv_, wg_, wa_, wb_};
  for (const Parameter* w : p.weights) {
    p.first.push_back(p.width);
    p.width += (w->value.dim(0) + 7) / 8 * 8;
  }
  p.stride = (p.width + 63) / 64 * 64;
  return p;
}

std::vector<Tensor> GatedDeltaNetMixer::ProjectionColumns::Of(const Tensor& buffer) const {
  std::vector<Tensor> views;
  for (size_t i = 0; i < weights.size(); ++i) views.push_back(buffer.Columns(first[i], end(i)));
  return views;
}

Tensor GatedDeltaNetMixer::StackedProjectionWeights(const ProjectionColumns& p) const {
  if (stacked_operand_.defined()) return stacked_operand_;
  std::vector<Tensor> weights;
  for (const Parameter* w : p.weights) weights.push_back(w->value);
  return ops::MatmulOperandRows(weights, p.first, p.stride);
}

Tensor GatedDeltaNetMixer::Backward(const Tensor& dout) {
  const ModelDims& d = b_.dims;
  const int64_t B = B_, T = T_, N = B * T;
  // The six input projections' output gradients side by side in one buffer dp (the forward's
  // layout, Projections()), each op writing its columns: dx is then one product over the stacked
  // weights, not six each adding into dx. The gaps are zeros, as are the stacked weights' rows
  // there.
  const ProjectionColumns pc = Projections();
  const Tensor dp = b_.OperandEmpty({N, pc.stride}).Columns(0, pc.width);
  const std::vector<Tensor> dproj = pc.Of(dp);
  for (size_t i = 0; i < pc.weights.size(); ++i) {  // the gaps
    const int64_t next = i + 1 < pc.weights.size() ? pc.first[i + 1] : pc.width;
    if (pc.end(i) < next) dp.Columns(pc.end(i), next).SetZero();
  }
  const Tensor &dqp = dproj[0], &dkp = dproj[1], &dvp = dproj[2], &dg = dproj[3], &da = dproj[4],
               &db = dproj[5];

  // The recurrence's gradients take the types of what the forward gave it (bf16 in the bf16
  // mode, float32 where probes measured it). `in` refers to in_, released after its last use.
  const RecurrenceInputs& in = in_;
  auto like = [&](const Tensor& t, int64_t cols) {
    return Tensor::Empty({N, cols}, t.dtype(), t.device());
  };
  // The output norm's backward writes its output y again (not kept) for Wo's gradient.
  Tensor dy = b_.Empty({N, value_dim_});
  Tensor d_o = like(o_, value_dim_);
  LinearBackwardRemakingInput(*wo_, dout, dy, [&] {
    Tensor y = b_.OperandEmpty({N, value_dim_});
    ops::GatedRmsNormBackward(o_, g_, o_norm_->value, o_rstd_, d.dv, dy, d_o, dg, o_norm_->grad,
                              y);
    return y;
  });

  Tensor dqn = like(in.qn, key_dim_), dkn = like(in.kn, key_dim_), dvc = like(in.vc, value_dim_);
  Tensor dgamma = b_.Empty({N, value_heads_}), dbeta = b_.Empty({N, value_heads_});
  ops::GatedDeltaRuleBackward(
      in.qn.View({B, T, heads_, d.dk}), in.kn.View({B, T, heads_, d.dk}),
      in.vc.View({B, T, value_heads_, d.dv}), gamma_, beta_, recurrence_scale_, d.chunk,
      d_o.View({B, T, value_heads_, d.dv}), dqn.View({B, T, heads_, d.dk}),
      dkn.View({B, T, heads_, d.dk}), dvc.View({B, T, value_heads_, d.dv}), dgamma, dbeta,
      recurrence_saved_);
  recurrence_saved_ = Tensor();  // its last use

  ops::GatesBackward(a_, bb_, a_log_->value, dt_bias_->value, d.beta_scale, dgamma, dbeta, da, db,
                     a_log_->grad, dt_bias_->grad);

  // q and k: the L2 norm's backward and the conv's in one op.
  ops::CausalConvSiluL2NormBackward(BySequence(qp_), conv_q_->value, BySequence(in.qn), in.q_rn,
                                    BySequence(dqn), BySequence(dqp), conv_q_->grad);
  ops::CausalConvSiluL2NormBackward(BySequence(kp_), conv_k_->value, BySequence(in.kn), in.k_rn,
                                    BySequence(dkn), BySequence(dkp), conv_k_->grad);
  in_ = RecurrenceInputs();  // their last use
  ops::CausalConvSiluBackward(BySequence(vp_), conv_v_->value, BySequence(dvc), BySequence(dvp),
                              conv_v_->grad);

  // The six weight gradients as one product, dp^T x (x_ in its matrix-product form; dp is
  // already in it), each weight's rows then added to its gradient (lt_tune, H200: 238 us against
  // 330 us for six products a layer). Then dx = dp [Wq; Wk; Wv; Wg; Wa; Wb] (with dp's gaps as
  // zero rows).
  {
    const Tensor dw = b_.Empty({pc.width, d.width});
    ops::Matmul(dp, true, x_, false, dw);
    for (size_t i = 0; i < pc.weights.size(); ++i)
      ops::Axpy(1.0, dw.Rows(pc.first[i], pc.end(i)), pc.weights[i]->grad);
  }
  Tensor dx = b_.Empty({N, d.width});
  ops::Matmul(dp, false, StackedProjectionWeights(pc).Rows(0, pc.width), false, dx);
  return dx;
}

}  // namespace gdn
