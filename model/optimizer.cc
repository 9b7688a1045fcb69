#include "model/optimizer.h"

#include <cmath>

#include "kernels/ops.h"
#include "model/gradient_reducer.h"

namespace gdn {

double ScheduledLearningRate(const OptimizerSpec& spec, int64_t step, int64_t total_steps) {
  const double lr = spec.lr();
  const int64_t warmup = spec.warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  const int64_t span = std::max<int64_t>(1, total_steps - 1 - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double floor = spec.min_lr_ratio();
  switch (spec.decay()) {
    case OptimizerSpec::COSINE:
      return lr * (floor + (1 - floor) * 0.5 * (1 + std::cos(M_PI * progress)));
    case OptimizerSpec::LINEAR:
      return lr * (1 - (1 - floor) * progress);
    case OptimizerSpec::CONSTANT:
      return lr;
  }
  return lr;
}

double ClipScale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0;
}

Optimizer::Optimizer(const OptimizerSpec& spec, const ParameterSet& params,
                     const GradientReducer* layout)
    : spec_(spec), params_(params), layout_(layout),
      per_param_(spec.kind() == OptimizerSpec::ADAMW ? 2 : 1) {
  if (layout_ != nullptr) {
    const Tensor& v = layout_->flat_values();
    for (int k = 0; k < per_param_; ++k)
      state_.push_back(Tensor::Zeros({layout_->shard_size()}, v.dtype(), v.device()));
    return;
  }
  for (const auto& p : params.all())
    for (int k = 0; k < per_param_; ++k)
      state_.push_back(Tensor::Zeros(p->value.shape(), p->value.dtype(), p->value.device()));
}

void Optimizer::Step(int64_t step, double lr, double grad_scale) {
  const auto& all = params_.all();
  const bool adamw = spec_.kind() == OptimizerSpec::ADAMW;
  if (layout_ == nullptr) {
    for (size_t i = 0; i < all.size(); ++i) {
      const Parameter& p = *all[i];
      if (grad_scale != 1.0) ops::Scale(p.grad, grad_scale);
      const double plr = lr * p.mult.lr, wd = spec_.weight_decay() * p.mult.weight_decay;
      const Tensor* state = &state_[per_param_ * i];
      if (adamw)
        ops::AdamWUpdate(p.value, p.grad, state[0], state[1], plr, spec_.beta1(), spec_.beta2(),
                         spec_.eps(), wd, step);
      else
        ops::SgdUpdate(p.value, p.grad, state[0], plr, spec_.momentum(), wd);
    }
    return;
  }
  // Over the flat buffers: every segment this rank updates (under ZeRO-1 its chunks only) with
  // its parameter's rate and decay, in one multi-tensor call.
  const auto& segments = layout_->segments();
  Tensor pieces = Tensor::Empty({static_cast<int64_t>(segments.size()), 5}, DType::kF64);
  double* row = pieces.data<double>();
  for (const GradientReducer::Segment& s : segments) {
    const Parameter& p = *all[s.param];
    *row++ = static_cast<double>(s.flat);
    *row++ = static_cast<double>(s.shard_offset);
    *row++ = static_cast<double>(s.length);
    *row++ = lr * p.mult.lr;
    *row++ = spec_.weight_decay() * p.mult.weight_decay;
  }
  if (adamw)
    ops::AdamWUpdatePieces(layout_->flat_values(), layout_->flat_grads(), state_[0], state_[1],
                           pieces, spec_.beta1(), spec_.beta2(), spec_.eps(), step, grad_scale);
  else
    ops::SgdUpdatePieces(layout_->flat_values(), layout_->flat_grads(), state_[0], pieces,
                         spec_.momentum(), grad_scale);
}

std::vector<Tensor> Optimizer::FullState() const {
  if (layout_ == nullptr) return state_;
  std::vector<std::vector<Tensor>> by_kind;
  for (int k = 0; k < per_param_; ++k) by_kind.push_back(layout_->GatherShards(state_[k]));
  std::vector<Tensor> full;
  for (size_t i = 0; i < params_.all().size(); ++i)
    for (int k = 0; k < per_param_; ++k) full.push_back(by_kind[k][i]);
  return full;
}

void Optimizer::SetFullState(const std::vector<Tensor>& full) {
  CHECK_EQ(full.size(), per_param_ * params_.all().size());
  if (layout_ == nullptr) {
    for (size_t i = 0; i < full.size(); ++i) state_[i].CopyFrom(full[i]);
    return;
  }
  for (int k = 0; k < per_param_; ++k) {
    std::vector<Tensor> kind;
    for (size_t i = 0; i < params_.all().size(); ++i) kind.push_back(full[per_param_ * i + k]);
    layout_->CopyToShard(kind, state_[k]);
  }
}

}  // namespace gdn
