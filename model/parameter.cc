#include "model/parameter.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "runtime/rng.h"

namespace gdn {

Shape Parameter::LocalShape(const TensorParallel& tp) const {
  Shape s = global_shape;
  if (shard == ShardDim::kReplicated) return s;
  const int d = shard == ShardDim::kRows ? 0 : 1;
  CHECK_EQ(s.at(d) % tp.size, 0) << name << " " << ShapeString(s) << " not divisible by " << tp.size;
  s[d] /= tp.size;
  return s;
}

Tensor Parameter::FullInit(uint64_t seed) const {
  Tensor full = Tensor::Empty(global_shape, DType::kF64);
  double* p = full.data<double>();
  Rng rng(seed, HashString(name));
  const int64_t n = full.numel();
  for (int64_t i = 0; i < n; ++i) {
    switch (init) {
      case InitKind::kNormal:
        p[i] = mult.init_std == 0 ? 0.0 : mult.init_std * rng.Normal();
        break;
      case InitKind::kOnes:
        p[i] = 1.0;
        break;
      case InitKind::kALog:
        p[i] = std::log(std::max(16.0 * rng.Uniform(), 1e-6));
        break;
      case InitKind::kDtBias: {
        const double lo = std::log(1e-3), hi = std::log(0.1);
        const double dt = std::max(std::exp(lo + (hi - lo) * rng.Uniform()), 1e-4);
        p[i] = dt + std::log(-std::expm1(-dt));  // softplus(dt_bias) == dt
        break;
      }
    }
  }
  return full;
}

void Parameter::Initialize(uint64_t seed, const TensorParallel& tp) {
  CopySlice(FullInit(seed), tp, value);
}

void Parameter::CopySlice(const Tensor& full, const TensorParallel& tp, const Tensor& local) const {
  const Shape local_shape = LocalShape(tp);
  CHECK(full.shape() == global_shape) << name << ": " << ShapeString(full.shape());
  CHECK(local.shape() == local_shape) << name << ": " << ShapeString(local.shape());
  const int64_t rows = global_shape.empty() ? 1 : global_shape[0];
  const int64_t cols = full.numel() / std::max<int64_t>(rows, 1);
  const int64_t lrows = local_shape.empty() ? 1 : local_shape[0];
  const int64_t lcols = local.numel() / std::max<int64_t>(lrows, 1);
  const int64_t row0 = shard == ShardDim::kRows ? tp.rank * lrows : 0;
  const int64_t col0 = shard == ShardDim::kCols ? tp.rank * lcols : 0;
  // Cut on the host; a device tensor receives the cut in one copy.
  const bool on_host = local.device() == Device::kCPU;
  const Tensor host = on_host ? local : Tensor::Empty(local.shape(), local.dtype());
  for (int64_t r = 0; r < lrows; ++r)
    for (int64_t c = 0; c < lcols; ++c)
      host.set(r * lcols + c, full.at((row0 + r) * cols + col0 + c));
  if (!on_host) local.CopyFrom(host);
}

Parameter* ParameterSet::Add(std::string name, Shape global_shape, ParamClass cls, InitKind init,
                             ShardDim shard, const ParamMultipliers& mult, DType dtype,
                             const TensorParallel& tp, Device device) {
  auto p = std::make_unique<Parameter>();
  p->name = std::move(name);
  p->global_shape = std::move(global_shape);
  p->cls = cls;
  p->init = init;
  p->shard = shard;
  p->mult = mult;
  p->value = Tensor::Zeros(p->LocalShape(tp), dtype, device);
  p->grad = Tensor::Zeros(p->LocalShape(tp), dtype, device);
  params_.push_back(std::move(p));
  return params_.back().get();
}

Parameter* ParameterSet::Find(const std::string& name) const {
  for (const auto& p : params_)
    if (p->name == name) return p.get();
  return nullptr;
}

void ParameterSet::ZeroGrads() const {
  for (const auto& p : params_) p->grad.SetZero();
}

void ParameterSet::RoundOperands() const {
  std::vector<Tensor> values, operands;
  for (const auto& p : params_) {
    if (!p->operand.defined()) continue;
    values.push_back(p->value);
    operands.push_back(p->operand);
  }
  ops::CopyToMatmulOperands(values, operands);
}

int64_t ParameterSet::NumElements() const {
  int64_t n = 0;
  for (const auto& p : params_) n += gdn::NumElements(p->global_shape);
  return n;
}

}  // namespace gdn
