// AdamW and SGD with momentum over a ParameterSet. The base learning rate follows the schedule
// (warmup, then cosine / linear / constant decay) and each parameter's rate and weight decay are
// the base values times its parametrization multipliers: the schedule scales, never overwrites.
#pragma once

#include <vector>

#include "model/parameter.h"
#include "proto/gdn.pb.h"

namespace gdn {

// The base learning rate at optimizer step `step` (0-based) of `total_steps`.
double ScheduledLearningRate(const OptimizerSpec& spec, int64_t step, int64_t total_steps);

// Gradient clipping's factor for a global gradient norm: max_norm / norm when norm > max_norm > 0,
// else 1. Optimizer::Step applies it.
double ClipScale(double norm, double max_norm);

class GradientReducer;

class Optimizer {
 public:
  // With a reducer (the trainer's case) the state lives in the reducer's shard layout and Step
  // updates the flat buffers in one multi-tensor call: under ZeRO-1 (GradientReducer::sharded())
  // only this rank's segments, from its reduced chunks, the reducer then gathering the values
  // (GradientReducer::GatherValues). Without one, each parameter is updated on its own.
  Optimizer(const OptimizerSpec& spec, const ParameterSet& params,
            const GradientReducer* layout = nullptr);
  // One update with base learning rate `lr`; `step` counts updates from 1 (Adam's bias correction).
  // Every gradient is taken times grad_scale (ClipScale's factor), exactly as if it had been
  // scaled first: with a reducer inside the multi-tensor update, without a pass over the
  // gradients (which stay as they are).
  void Step(int64_t step, double lr, double grad_scale = 1.0);
  // The state as full per-parameter tensors (this rank's tensor-parallel slices), in parameter
  // order, m and v for AdamW, the momentum buffer for SGD: under ZeRO-1 gathered over the
  // data-parallel group (collective: every rank of it calls this), else views of the state.
  std::vector<Tensor> FullState() const;
  // Sets the state from such tensors (a sharded optimizer keeps its segments).
  void SetFullState(const std::vector<Tensor>& full);
  // How many state tensors each parameter has (2 for AdamW, 1 for SGD).
  int per_param() const { return per_param_; }

 private:
  OptimizerSpec spec_;
  const ParameterSet& params_;
  const GradientReducer* layout_;
  int per_param_;
  // Without a reducer: per_param_ tensors per parameter. With one: per_param_ shard-layout tensors.
  std::vector<Tensor> state_;
};

}  // namespace gdn
