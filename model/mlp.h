// The SwiGLU MLP: out = down(silu(gate x) * up x). gate and up are column parallel, down is row
// parallel, so `out` is this rank's partial sum under tensor parallelism.
#pragma once

#include "model/layer.h"

namespace gdn {

class SwiGluMlp {
 public:
  SwiGluMlp(const std::string& prefix, const LayerBuilder& builder);
  Tensor Forward(const Tensor& x);
  Tensor Backward(const Tensor& dout);
  // Drops the activations Forward saved (once the backward is done; with activation
  // recomputation Forward runs again before Backward).
  void ReleaseSaved() { x_ = gate_out_ = up_out_ = Tensor(); }

 private:
  LayerBuilder b_;
  Parameter *gate_, *up_, *down_;
  Tensor x_, gate_out_, up_out_;  // saved (bf16 in the bf16 mode)
};

}  // namespace gdn
