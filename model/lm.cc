#include "model/lm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/ops.h"

namespace gdn {

LanguageModel::LanguageModel(const ExperimentSpec& spec, DType dtype, TensorParallel tp,
                             Communicator* tp_comm, Device device) {
  auto dims = ResolveModelDims(spec.model());
  CHECK(dims.ok()) << dims.status();  // validated by the caller
  builder_.dims = *dims;
  builder_.parametrization = spec.parametrization();
  builder_.optimizer = spec.optimizer().kind();
  builder_.width_mult = WidthMultiplier(spec);
  builder_.dtype = dtype;
  builder_.device = device;
  builder_.tp = tp;
  builder_.tp_comm = tp_comm;
  builder_.params = &params_;
  const ModelDims& d = builder_.dims;

  // Embedding and head are vocabulary parallel: each rank holds a contiguous block of rows.
  embedding_ = builder_.Add("embedding", {d.vocab, d.width}, ParamClass::kInput,
                            InitKind::kNormal, ShardDim::kRows);
  blocks_.resize(d.depth);
  for (int64_t l = 0; l < d.depth; ++l) {
    const std::string prefix = "layers." + std::to_string(l) + ".";
    Block& blk = blocks_[l];
    blk.first_param = params_.all().size();
    blk.mixer_norm = builder_.Add(prefix + "attn_norm", {d.width}, ParamClass::kVector,
                                  InitKind::kOnes, ShardDim::kReplicated);
    blk.mixer = std::make_unique<GatedDeltaNetMixer>(prefix + "attn.", builder_);
    blk.mlp_norm = builder_.Add(prefix + "mlp_norm", {d.width}, ParamClass::kVector,
                                InitKind::kOnes, ShardDim::kReplicated);
    blk.mlp = std::make_unique<SwiGluMlp>(prefix + "mlp.", builder_);
    blk.end_param = params_.all().size();
  }
  final_norm_ = builder_.Add("norm", {d.width}, ParamClass::kVector, InitKind::kOnes,
                             ShardDim::kReplicated);
  // A tied head reuses the embedding matrix but keeps the readout's forward multiplier.
  out_mult_ = MultipliersFor(ParamClass::kOutput, builder_.parametrization, builder_.optimizer,
                             builder_.width_mult)
                  .forward;
  // A test hook: a small limit makes even tiny models take the chunked head path.
  if (const char* env = std::getenv("GDN_TEST_MAX_LOGITS_ELEMENTS"))
    max_logits_elements_ = std::max<int64_t>(1, std::atoll(env));
  head_ = d.tied ? embedding_
                 : builder_.Add("lm_head", {d.vocab, d.width}, ParamClass::kOutput,
                                InitKind::kNormal, ShardDim::kRows);
  builder_.KeepOperand(head_);
}

void LanguageModel::Initialize(uint64_t seed) {
  seed_ = seed;
  for (const auto& p : params_.all()) p->Initialize(seed, builder_.tp);
}

double LanguageModel::MatmulFlopsPerToken() const {
  return gdn::MatmulFlopsPerToken(builder_.dims);
}

void LanguageModel::Forward(const Tensor& tokens, Probes* probes, bool full_logits,
                            bool for_backward) {
  const ModelDims& d = builder_.dims;
  params_.RoundOperands();  // the weights' bf16 copies from this step's values
  CHECK_EQ(tokens.rank(), 2);
  const int64_t B = tokens.dim(0), T = tokens.dim(1) - 1, N = B * T;
  batch_ = B;
  seq_ = T;
  // Inputs and targets are cut on the host (tokens come from the loader there), then moved.
  Tensor inputs = Tensor::Empty({N}, DType::kI32), targets = Tensor::Empty({N}, DType::kI32);
  const Tensor host_tokens = tokens.To(Device::kCPU);
  const int32_t* tok = host_tokens.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(inputs.data<int32_t>() + b * T, tok + b * (T + 1), T * sizeof(int32_t));
    std::memcpy(targets.data<int32_t>() + b * T, tok + b * (T + 1) + 1, T * sizeof(int32_t));
  }
  inputs_ = inputs.To(builder_.device);
  targets_ = targets.To(builder_.device);
  Tensor x = builder_.Empty({N, d.width});
  ops::EmbeddingForward(inputs_, embedding_->value, embedding_->mult.forward, x, VocabOffset());
  builder_.AllReduceTp(x);
  if (probes) (*probes)["embedding"] += ops::MeanAbs(x);

  // Every norm after the first reads the residual stream right after its add: one fused op makes
  // the stream's next value and its norm (the next block's mixer norm, or the final norm).
  Tensor n = builder_.OperandEmpty({N, d.width}), r = builder_.Empty({N});
  ops::RmsNormForward(x, (blocks_.empty() ? final_norm_ : blocks_[0].mixer_norm)->value,
                      d.norm_eps, n, r);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& blk = blocks_[l];
    blk.x = x;
    blk.r1 = r;
    // Recomputation runs the block again before its backward: that forward saves instead.
    const bool save = save_recurrence_ && for_backward && !recompute_;
    const Tensor f = BlockForward(blk, n, B, T, probes, save);
    const Parameter* next_norm = l + 1 < blocks_.size() ? blocks_[l + 1].mixer_norm : final_norm_;
    x = builder_.Empty({N, d.width});
    n = builder_.OperandEmpty({N, d.width});
    r = builder_.Empty({N});
    ops::AddRmsNormForward(blk.h, f, next_norm->value, d.norm_eps, x, n, r);
    if (recompute_) ReleaseBlock(blk);
  }
  xf_in_ = x;
  xf_ = n;
  rf_ = r;
  if (!full_logits) return;
  logits_ = builder_.Empty({N, d.vocab / builder_.tp.size});
  ops::Matmul(xf_, false, head_->Operand(), true, logits_, out_mult_);
}

Tensor LanguageModel::BlockForward(Block& blk, const Tensor& n1, int64_t B, int64_t T,
                                   Probes* probes, bool save_recurrence) {
  const ModelDims& d = builder_.dims;
  const int64_t N = B * T;
  Tensor m = blk.mixer->Forward(n1, B, T, probes, save_recurrence);
  builder_.AllReduceTp(m);
  blk.h = builder_.Empty({N, d.width});
  Tensor n2 = builder_.OperandEmpty({N, d.width});
  blk.r2 = builder_.Empty({N});
  ops::AddRmsNormForward(blk.x, m, blk.mlp_norm->value, d.norm_eps, blk.h, n2, blk.r2);
  Tensor f = blk.mlp->Forward(n2);
  builder_.AllReduceTp(f);
  if (probes) (*probes)["mlp_out"] += ops::MeanAbs(f);
  return f;
}

void LanguageModel::ReleaseBlock(Block& blk) {
  blk.r1 = blk.h = blk.r2 = Tensor();
  blk.mixer->ReleaseSaved();
  blk.mlp->ReleaseSaved();
}

Tensor LanguageModel::ForwardLogits(const Tensor& tokens) {
  CHECK_EQ(builder_.tp.size, 1) << "ForwardLogits runs on one rank";
  CHECK_EQ(tokens.rank(), 2);
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  // Forward takes [B, T + 1] (inputs and targets); the extra column is an unused target.
  Tensor padded = Tensor::Zeros({B, T + 1}, DType::kI32);
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(padded.data<int32_t>() + b * (T + 1), tokens.data<int32_t>() + b * T,
                T * sizeof(int32_t));
  Forward(padded, nullptr, true);
  return logits_;
}

LanguageModel::DecodeState LanguageModel::NewDecodeState(int64_t B) const {
  DecodeState s;
  for (const Block& blk : blocks_) s.mixers.push_back(blk.mixer->NewState(B));
  return s;
}

Tensor LanguageModel::ForwardStep(const Tensor& tokens, DecodeState& state) {
  CHECK_EQ(builder_.tp.size, 1) << "ForwardStep runs on one rank";
  const ModelDims& d = builder_.dims;
  params_.RoundOperands();  // its products read the kept copies too (none on the CPU)
  const int64_t B = tokens.numel();
  CHECK_EQ(state.mixers.size(), blocks_.size());
  Tensor x = builder_.Empty({B, d.width});
  ops::EmbeddingForward(tokens, embedding_->value, embedding_->mult.forward, x);
  Tensor n = builder_.Empty({B, d.width}), r = builder_.Empty({B});
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& blk = blocks_[l];
    ops::RmsNormForward(x, blk.mixer_norm->value, d.norm_eps, n, r);
    Tensor m = blk.mixer->ForwardStep(n, state.mixers[l]);
    Tensor h = builder_.Empty({B, d.width});
    ops::Add(x, m, h);
    ops::RmsNormForward(h, blk.mlp_norm->value, d.norm_eps, n, r);
    Tensor f = blk.mlp->Forward(n);
    x = builder_.Empty({B, d.width});
    ops::Add(h, f, x);
  }
  ops::RmsNormForward(x, final_norm_->value, d.norm_eps, n, r);
  Tensor logits = builder_.Empty({B, d.vocab});
  ops::Matmul(n, false, head_->Operand(), true, logits, out_mult_);
  ++state.position;
  return logits;
}

double LanguageModel::Loss(const Tensor& logits, const Tensor& targets, const Tensor& dlogits,
                           double grad_scale) {
  if (builder_.tp.size == 1) return ops::CrossEntropy(logits, targets, dlogits, grad_scale);
  // Vocabulary parallel: the softmax's max and normaliser and the target logit are reduced over
  // the group, so no rank ever holds the full logits.
  const int64_t N = targets.numel();
  Tensor row_max = builder_.Empty({N}), sum_exp = builder_.Empty({N});
  Tensor target_logit = builder_.Empty({N});
  ops::RowMax(logits, row_max);
  builder_.tp_comm->AllReduceMax(row_max);
  ops::SoftmaxRowStats(logits, targets, VocabOffset(), row_max, sum_exp, target_logit);
  builder_.AllReduceTp(sum_exp);
  builder_.AllReduceTp(target_logit);
  return ops::CrossEntropyFromStats(logits, targets, VocabOffset(), row_max, sum_exp, target_logit,
                                    dlogits, grad_scale);
}

double LanguageModel::HeadAndLoss(double grad_scale, const Tensor& dxf, Probes* probes) {
  const int64_t N = xf_.dim(0), V = builder_.dims.vocab / builder_.tp.size;
  const int64_t rows = std::clamp<int64_t>(max_logits_elements_ / V, 1, N);
  const bool backward = dxf.defined();
  double loss = 0;
  // x rounded once for all the chunks' products (bf16 mode); the head's copy is kept.
  const Tensor xm = ops::MatmulOperand(xf_), w = head_->Operand();
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t r1 = std::min(N, r0 + rows);
    // Each chunk's mean weighs its share of the rows (exactly 1 for a single chunk).
    const double share = static_cast<double>(r1 - r0) / N;
    const Tensor x = xm.Rows(r0, r1);
    // The loss reads the logits as [stored] input: in the bf16 mode the product writes them in
    // bf16 (half the traffic and memory; the loss's arithmetic stays float32), float32 where
    // probes measure them. The loss gradient, in its products' form, overwrites them.
    const Shape shape{r1 - r0, V};
    Tensor logits = probes ? builder_.Empty(shape) : builder_.OperandEmpty(shape);
    ops::Matmul(x, false, w, true, logits, out_mult_);
    if (probes) (*probes)["logits"] += share * ops::MeanAbs(logits);
    Tensor dlogits;
    if (backward) dlogits = probes ? builder_.OperandEmpty(shape) : logits;
    loss += share * Loss(logits, targets_.Rows(r0, r1), dlogits, share * grad_scale);
    if (!backward) continue;
    ops::Matmul(dlogits, true, x, false, head_->grad, out_mult_, 1.0);
    ops::Matmul(dlogits, false, w, false, dxf.Rows(r0, r1), out_mult_, 0.0);
  }
  return loss;
}

double LanguageModel::ForwardLoss(const Tensor& tokens, Probes* probes) {
  Forward(tokens, probes, false);
  return HeadAndLoss(1.0, Tensor(), probes);
}

double LanguageModel::ForwardBackward(const Tensor& tokens, double grad_scale,
                                      GradientReducer* reducer) {
  Forward(tokens, nullptr, false, true);
  Tensor dxf = builder_.Empty({xf_.dim(0), builder_.dims.width});
  const double loss = HeadAndLoss(grad_scale, dxf, nullptr);
  Backward(dxf, reducer);
  return loss;
}

void LanguageModel::Backward(const Tensor& dxf, GradientReducer* reducer) {
  const ModelDims& d = builder_.dims;
  const int64_t N = xf_.dim(0);
  auto final_grad = [&](const Parameter* p) {
    if (reducer != nullptr) reducer->GradReady(p);
  };
  if (head_ != embedding_) final_grad(head_);
  builder_.AllReduceTp(dxf);
  // dx: the residual stream's gradient, float32, which each norm's backward adds to. The blocks
  // read it only through matrix products: in the bf16 mode the norms' backward also writes its
  // rounded copy, dx_operand, which the blocks take instead.
  Tensor dx = builder_.Empty({N, d.width});
  const bool round = builder_.OperandsRounded();
  const Tensor dx_operand = round ? builder_.OperandEmpty({N, d.width}) : Tensor();
  const Tensor& dx_in = round ? dx_operand : dx;
  ops::RmsNormBackward(xf_in_, final_norm_->value, rf_, dxf, dx, final_norm_->grad, false,
                       dx_operand);
  final_grad(final_norm_);

  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& blk = *it;
    if (recompute_) {
      Tensor n1 = builder_.OperandEmpty({N, d.width});
      blk.r1 = builder_.Empty({N});
      ops::RmsNormForward(blk.x, blk.mixer_norm->value, d.norm_eps, n1, blk.r1);
      BlockForward(blk, n1, batch_, seq_, nullptr, save_recurrence_);
    }
    // out = h + mlp(norm(h)): dh = dout + norm'(mlp'(dout)).
    Tensor dn2 = blk.mlp->Backward(dx_in);
    builder_.AllReduceTp(dn2);
    ops::RmsNormBackward(blk.h, blk.mlp_norm->value, blk.r2, dn2, dx, blk.mlp_norm->grad, true,
                         dx_operand);
    // h = x + mixer(norm(x)): dx = dh + norm'(mixer'(dh)).
    Tensor dn1 = blk.mixer->Backward(dx_in);
    builder_.AllReduceTp(dn1);
    ops::RmsNormBackward(blk.x, blk.mixer_norm->value, blk.r1, dn1, dx, blk.mixer_norm->grad, true,
                         dx_operand);
    for (size_t i = blk.end_param; i-- > blk.first_param;) final_grad(params_.all()[i].get());
    // Done with the block's activations: their memory serves the blocks below.
    ReleaseBlock(blk);
    blk.x = Tensor();
  }
  ops::EmbeddingBackward(inputs_, dx, embedding_->mult.forward, embedding_->grad, VocabOffset());
  final_grad(embedding_);
}

}  // namespace gdn
