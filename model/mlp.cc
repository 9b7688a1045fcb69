#include "model/mlp.h"

namespace gdn {

SwiGluMlp::SwiGluMlp(const std::string& prefix, const LayerBuilder& builder) : b_(builder) {
  const ModelDims& d = b_.dims;
  gate_ = b_.Add(prefix + "gate_proj", {d.mlp_hidden, d.width}, ParamClass::kHidden,
                 InitKind::kNormal, ShardDim::kRows);
  up_ = b_.Add(prefix + "up_proj", {d.mlp_hidden, d.width}, ParamClass::kHidden,
               InitKind::kNormal, ShardDim::kRows);
  down_ = b_.Add(prefix + "down_proj", {d.width, d.mlp_hidden}, ParamClass::kHidden,
                 InitKind::kNormal, ShardDim::kCols);
  for (Parameter* w : {gate_, up_, down_}) b_.KeepOperand(w);
}

Tensor SwiGluMlp::Forward(const Tensor& x) {
  // x and h feed products only: in their matrix-product form (bf16 in the bf16 mode), x rounded
  // once for two products; gate and up are read by SwiGLU only: bf16 in the bf16 mode too. h is
  // not kept: SwiGLU's backward writes it again for down's weight gradient.
  x_ = ops::MatmulOperand(x);
  gate_out_ = LinearForward(b_, x_, *gate_, true);
  up_out_ = LinearForward(b_, x_, *up_, true);
  Tensor h = b_.OperandEmpty(gate_out_.shape());
  ops::SwigluForward(gate_out_, up_out_, h);
  return LinearForward(b_, h, *down_);
}

Tensor SwiGluMlp::Backward(const Tensor& dout) {
  Tensor dh = b_.Empty(gate_out_.shape());  // float32: SwiGLU's backward reads it
  Tensor dgate = b_.OperandEmpty(dh.shape()), dup = b_.OperandEmpty(dh.shape());
  LinearBackwardRemakingInput(*down_, dout, dh, [&] {
    Tensor h = b_.OperandEmpty(dh.shape());
    ops::SwigluBackward(gate_out_, up_out_, dh, dgate, dup, h);
    return h;
  });
  Tensor dx = b_.Empty(x_.shape());  // float32, whatever x_'s form
  LinearBackward(x_, *gate_, dgate, dx, false);
  LinearBackward(x_, *up_, dup, dx, true);
  return dx;
}

}  // namespace gdn
