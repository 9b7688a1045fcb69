// A parameter knows its global shape, how it is split over tensor-parallel ranks, its muP class
// and its multipliers. Initialisation draws the FULL tensor from the run's seed and the
// parameter's name, then keeps this rank's slice, so every layout starts from the same weights.
#pragma once

#include <string>
#include <vector>

#include "model/parametrization.h"
#include "runtime/tensor.h"

namespace gdn {

enum class ShardDim {
  kReplicated,  // every rank holds the whole tensor
  kRows,        // dim 0 split in equal contiguous parts (column-parallel weights, per-head vectors)
  kCols,        // dim 1 split (row-parallel weights)
};

enum class InitKind {
  kNormal,  // N(0, multipliers.init_std^2)
  kOnes,    // norm weights
  kALog,    // A_log = log(A), A ~ U(0, 16)
  kDtBias,  // inverse softplus of dt, dt log-uniform in [1e-3, 0.1]
};

struct TensorParallel {
  int rank = 0;
  int size = 1;
};

struct Parameter {
  std::string name;
  Shape global_shape;
  ParamClass cls = ParamClass::kHidden;
  InitKind init = InitKind::kNormal;
  ShardDim shard = ShardDim::kReplicated;
  ParamMultipliers mult;
  // A replicated parameter used inside the tensor-parallel region (the per-head output norm): each
  // rank's gradient covers only its heads, so gradients are summed over the group once per step.
  bool tp_partial_grad = false;
  Tensor value;  // this rank's slice
  Tensor grad;   // same shape as value
  // For a weight that matrix products read, in the bf16 mode on CUDA: its bf16 copy (the layer's
  // storage, LayerBuilder::KeepOperand), rounded from value once before each forward
  // (ParameterSet::RoundOperands) instead of at every product. Undefined otherwise.
  Tensor operand;
  // What matrix products read: the copy where there is one, else value.
  const Tensor& Operand() const { return operand.defined() ? operand : value; }

  // Shape of this rank's slice.
  Shape LocalShape(const TensorParallel& tp) const;
  // Draws the full tensor (float64) from (seed, name) and keeps this rank's slice.
  void Initialize(uint64_t seed, const TensorParallel& tp);
  // The full tensor as initialised, before slicing (tests compare shards against it).
  Tensor FullInit(uint64_t seed) const;
  // Copies this rank's slice of `full` (global_shape, any dtype, on the CPU) into `local`
  // (LocalShape(tp), on any device): initialisation and checkpoint loading cut tensors the same way.
  void CopySlice(const Tensor& full, const TensorParallel& tp, const Tensor& local) const;
};

// The parameters of a model, in a fixed order (checkpoints, optimizer state and the gradient
// norm all walk this list).
class ParameterSet {
 public:
  // Creates a parameter with this rank's slice allocated (value and zeroed grad).
  Parameter* Add(std::string name, Shape global_shape, ParamClass cls, InitKind init,
                 ShardDim shard, const ParamMultipliers& mult, DType dtype,
                 const TensorParallel& tp, Device device = Device::kCPU);
  const std::vector<std::unique_ptr<Parameter>>& all() const { return params_; }
  Parameter* Find(const std::string& name) const;
  void ZeroGrads() const;
  // Rounds every parameter's value into its operand copy (one launch): after the values last
  // changed (optimizer step, gather, checkpoint load) and before the products read the copies.
  // The model calls it at the start of each forward.
  void RoundOperands() const;
  int64_t NumElements() const;  // global element count

 private:
  std::vector<std::unique_ptr<Parameter>> params_;
};

}  // namespace gdn
