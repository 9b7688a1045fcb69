// What every layer needs to create its parameters and run: the sizes, the parametrization, the
// element type and this rank's place in the tensor-parallel group.
#pragma once

#include <map>
#include <string>

#include "model/config.h"
#include "model/parameter.h"
#include "model/parametrization.h"
#include "runtime/communicator.h"
#include "kernels/ops.h"

namespace gdn {

// Mean |coordinate| of named activations (coordinate checks); filled when a layer gets one.
using Probes = std::map<std::string, double>;

struct LayerBuilder {
  ModelDims dims;
  ParametrizationSpec parametrization;
  OptimizerSpec::Kind optimizer = OptimizerSpec::ADAMW;
  double width_mult = 1.0;  // m, from global sizes
  DType dtype = DType::kF32;
  Device device = Device::kCPU;  // where parameters and activations live
  TensorParallel tp;
  // The tensor-parallel group (Megatron's f and g operators: sum the row-parallel outputs in the
  // forward, sum the gradients of the column-parallel inputs in the backward); null for one rank.
  Communicator* tp_comm = nullptr;
  ParameterSet* params = nullptr;

  void AllReduceTp(const Tensor& t) const {
    if (tp_comm != nullptr && tp.size > 1) tp_comm->AllReduceSum(t);
  }

  Parameter* Add(const std::string& name, Shape global_shape, ParamClass cls, InitKind init,
                 ShardDim shard) const {
    return params->Add(name, std::move(global_shape), cls, init, shard,
                       MultipliersFor(cls, parametrization, optimizer, width_mult), dtype, tp,
                       device);
  }
  Tensor Empty(const Shape& shape) const { return Tensor::Empty(shape, dtype, device); }
  // For an op output that feeds matrix products only, or that only ops taking [stored] inputs read
  // (kernels/op_set.inc): bf16 in the bf16 mode on CUDA.
  Tensor OperandEmpty(const Shape& shape) const {
    return Tensor::Empty(shape, ops::MatmulOperandType(dtype, device), device);
  }
  // Whether OperandEmpty's tensors differ in type from Empty's (bf16 copies, the bf16 mode on CUDA).
  bool OperandsRounded() const { return ops::MatmulOperandType(dtype, device) != dtype; }
  // Gives the weight w a kept bf16 copy for matrix products (Parameter::operand) where operands
  // are rounded: `storage` (w's shape, OperandEmpty's type) when given, else a new tensor.
  void KeepOperand(Parameter* w, const Tensor& storage = Tensor()) const {
    if (!OperandsRounded()) return;
    w->operand = storage.defined() ? storage : OperandEmpty(w->value.shape());
  }
};

// y = x W^T for x [N, in], W [out, in]; x may be an ops::MatmulOperand. stored: y is read only by
// ops that take [stored] inputs (kernels/op_set.inc), so in the bf16 mode it is written in bf16,
// halving what is kept for the backward.
inline Tensor LinearForward(const LayerBuilder& b, const Tensor& x, const Parameter& w,
                            bool stored = false) {
  const Shape shape{x.dim(0), w.value.dim(0)};
  Tensor y = stored ? b.OperandEmpty(shape) : b.Empty(shape);
  ops::Matmul(x, false, w.Operand(), true, y);
  return y;
}
// dW += dy^T x;  dx = dy W + accumulate * dx (x as LinearForward had it).
inline void LinearBackward(const Tensor& x, const Parameter& w, const Tensor& dy, const Tensor& dx,
                           bool accumulate) {
  const Tensor dym = ops::MatmulOperand(dy);  // one rounding for both products
  ops::Matmul(dym, true, x, false, w.grad, 1.0, 1.0);
  ops::Matmul(dym, false, w.Operand(), false, dx, 1.0, accumulate ? 1.0 : 0.0);
}
// LinearBackward for a layer whose input x the forward did not keep: dx = dy W first, then
// remake_input() returns x, made again by the backward op that takes dx (it reads what x is made
// from anyway), then dW += dy^T x.
template <typename RemakeInput>
void LinearBackwardRemakingInput(const Parameter& w, const Tensor& dy, const Tensor& dx,
                                 RemakeInput remake_input) {
  const Tensor dym = ops::MatmulOperand(dy);
  ops::Matmul(dym, false, w.Operand(), false, dx);
  const Tensor x = remake_input();
  ops::Matmul(dym, true, x, false, w.grad, 1.0, 1.0);
}

}  // namespace gdn
