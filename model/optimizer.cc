#include "model/optimizer.h"

#include <cmath>

#include "kernels/ops.h"

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

double GradNorm(const ParameterSet& params, const TensorParallel& tp, Communicator* tp_comm) {
  Tensor ss = Tensor::Zeros({1}, DType::kF64);
  for (const auto& p : params.all())
    if (p->shard != ShardDim::kReplicated || tp.rank == 0)
      ss.set(0, ss.at(0) + ops::SumSquares(p->grad));
  if (tp_comm != nullptr && tp.size > 1) tp_comm->AllReduceSum(ss);
  return std::sqrt(ss.at(0));
}

void ClipGradients(const ParameterSet& params, double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return;
  const double s = max_norm / norm;
  for (const auto& p : params.all()) ops::Scale(p->grad, s);
}

Optimizer::Optimizer(const OptimizerSpec& spec, const ParameterSet& params)
    : spec_(spec), params_(params) {
  const int per_param = spec.kind() == OptimizerSpec::ADAMW ? 2 : 1;
  for (const auto& p : params.all())
    for (int i = 0; i < per_param; ++i)
      state_.push_back(Tensor::Zeros(p->value.shape(), p->value.dtype(), p->value.device()));
}

void Optimizer::Step(int64_t step, double lr) {
  const auto& all = params_.all();
  for (size_t i = 0; i < all.size(); ++i) {
    const Parameter& p = *all[i];
    const double plr = lr * p.mult.lr;
    const double wd = spec_.weight_decay() * p.mult.weight_decay;
    if (spec_.kind() == OptimizerSpec::ADAMW) {
      ops::AdamWUpdate(p.value, p.grad, state_[2 * i], state_[2 * i + 1], plr, spec_.beta1(),
                       spec_.beta2(), spec_.eps(), wd, step);
    } else {
      ops::SgdUpdate(p.value, p.grad, state_[i], plr, spec_.momentum(), wd);
    }
  }
}

}  // namespace gdn
