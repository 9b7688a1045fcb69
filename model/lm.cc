#include "model/lm.h"

#include <cstring>

#include "kernels/ops.h"

namespace gdn {

LanguageModel::LanguageModel(const ExperimentSpec& spec, DType dtype, TensorParallel tp) {
  auto dims = ResolveModelDims(spec.model());
  CHECK(dims.ok()) << dims.status();  // validated by the caller
  builder_.dims = *dims;
  builder_.parametrization = spec.parametrization();
  builder_.optimizer = spec.optimizer().kind();
  builder_.width_mult = WidthMultiplier(spec);
  builder_.dtype = dtype;
  builder_.tp = tp;
  builder_.params = &params_;
  const ModelDims& d = builder_.dims;

  embedding_ = builder_.Add("embedding", {d.vocab, d.width}, ParamClass::kInput,
                            InitKind::kNormal, ShardDim::kReplicated);
  blocks_.resize(d.depth);
  for (int64_t l = 0; l < d.depth; ++l) {
    const std::string prefix = "layers." + std::to_string(l) + ".";
    Block& blk = blocks_[l];
    blk.mixer_norm = builder_.Add(prefix + "attn_norm", {d.width}, ParamClass::kVector,
                                  InitKind::kOnes, ShardDim::kReplicated);
    blk.mixer = std::make_unique<GatedDeltaNetMixer>(prefix + "attn.", builder_);
    blk.mlp_norm = builder_.Add(prefix + "mlp_norm", {d.width}, ParamClass::kVector,
                                InitKind::kOnes, ShardDim::kReplicated);
    blk.mlp = std::make_unique<SwiGluMlp>(prefix + "mlp.", builder_);
  }
  final_norm_ = builder_.Add("norm", {d.width}, ParamClass::kVector, InitKind::kOnes,
                             ShardDim::kReplicated);
  // A tied head reuses the embedding matrix but keeps the readout's forward multiplier.
  out_mult_ = MultipliersFor(ParamClass::kOutput, builder_.parametrization, builder_.optimizer,
                             builder_.width_mult)
                  .forward;
  head_ = d.tied ? embedding_
                 : builder_.Add("lm_head", {d.vocab, d.width}, ParamClass::kOutput,
                                InitKind::kNormal, ShardDim::kReplicated);
}

void LanguageModel::Initialize(uint64_t seed) {
  seed_ = seed;
  for (const auto& p : params_.all()) p->Initialize(seed, builder_.tp);
}

double LanguageModel::MatmulFlopsPerToken() const {
  double n = 0;
  for (const auto& p : params_.all())
    if (p->cls == ParamClass::kHidden || p.get() == head_) n += gdn::NumElements(p->global_shape);
  return 6.0 * n;
}

double LanguageModel::Forward(const Tensor& tokens, Probes* probes) {
  const ModelDims& d = builder_.dims;
  CHECK_EQ(tokens.rank(), 2);
  const int64_t B = tokens.dim(0), T = tokens.dim(1) - 1, N = B * T;
  inputs_ = Tensor::Empty({N}, DType::kI32);
  targets_ = Tensor::Empty({N}, DType::kI32);
  const int32_t* tok = tokens.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(inputs_.data<int32_t>() + b * T, tok + b * (T + 1), T * sizeof(int32_t));
    std::memcpy(targets_.data<int32_t>() + b * T, tok + b * (T + 1) + 1, T * sizeof(int32_t));
  }
  Tensor x = builder_.Empty({N, d.width});
  ops::EmbeddingForward(inputs_, embedding_->value, embedding_->mult.forward, x);
  if (probes) (*probes)["embedding"] += ops::MeanAbs(x);

  for (Block& blk : blocks_) {
    blk.x = x;
    blk.n1 = builder_.Empty({N, d.width});
    blk.r1 = builder_.Empty({N});
    ops::RmsNormForward(x, blk.mixer_norm->value, d.norm_eps, blk.n1, blk.r1);
    Tensor m = blk.mixer->Forward(blk.n1, B, T, probes);
    blk.h = builder_.Empty({N, d.width});
    ops::Add(x, m, blk.h);
    blk.n2 = builder_.Empty({N, d.width});
    blk.r2 = builder_.Empty({N});
    ops::RmsNormForward(blk.h, blk.mlp_norm->value, d.norm_eps, blk.n2, blk.r2);
    Tensor f = blk.mlp->Forward(blk.n2);
    if (probes) (*probes)["mlp_out"] += ops::MeanAbs(f);
    x = builder_.Empty({N, d.width});
    ops::Add(blk.h, f, x);
  }
  xf_in_ = x;
  xf_ = builder_.Empty({N, d.width});
  rf_ = builder_.Empty({N});
  ops::RmsNormForward(x, final_norm_->value, d.norm_eps, xf_, rf_);
  logits_ = builder_.Empty({N, d.vocab});
  ops::Matmul(xf_, false, head_->value, true, logits_, out_mult_);
  if (probes) (*probes)["logits"] += ops::MeanAbs(logits_);
  return 0;
}

double LanguageModel::ForwardLoss(const Tensor& tokens, Probes* probes) {
  Forward(tokens, probes);
  return ops::CrossEntropy(logits_, targets_, Tensor());
}

double LanguageModel::ForwardBackward(const Tensor& tokens, double grad_scale) {
  Forward(tokens, nullptr);
  // The loss gradient overwrites the logits in place: full-size probabilities are never kept.
  const double loss = ops::CrossEntropy(logits_, targets_, logits_, grad_scale);
  Backward(grad_scale);
  return loss;
}

void LanguageModel::Backward(double /*grad_scale: already in dlogits*/) {
  const ModelDims& d = builder_.dims;
  const int64_t N = xf_.dim(0);
  const Tensor& dlogits = logits_;
  ops::Matmul(dlogits, true, xf_, false, head_->grad, out_mult_, 1.0);
  Tensor dxf = builder_.Empty({N, d.width});
  ops::Matmul(dlogits, false, head_->value, false, dxf, out_mult_, 0.0);
  Tensor dx = builder_.Empty({N, d.width});
  ops::RmsNormBackward(xf_in_, final_norm_->value, rf_, dxf, dx, final_norm_->grad);

  Tensor tmp = builder_.Empty({N, d.width});
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& blk = *it;
    // out = h + mlp(norm(h)): dh = dout + norm'(mlp'(dout)).
    Tensor dn2 = blk.mlp->Backward(dx);
    ops::RmsNormBackward(blk.h, blk.mlp_norm->value, blk.r2, dn2, tmp, blk.mlp_norm->grad);
    ops::Axpy(1.0, tmp, dx);
    // h = x + mixer(norm(x)): dx = dh + norm'(mixer'(dh)).
    Tensor dn1 = blk.mixer->Backward(dx);
    ops::RmsNormBackward(blk.x, blk.mixer_norm->value, blk.r1, dn1, tmp, blk.mixer_norm->grad);
    ops::Axpy(1.0, tmp, dx);
  }
  ops::EmbeddingBackward(inputs_, dx, embedding_->mult.forward, embedding_->grad);
}

}  // namespace gdn
