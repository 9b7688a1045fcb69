// The gated delta rule op on CUDA tensors (twin of kernels/cpu/gdr_op.cc): shape checks, then
// chunk > 0: the chunked kernel of gated_delta_rule.cuh (its chunk is always 64: the chunk size
// changes only rounding) where its sizes allow (dk, dv multiples of 64 up to 256, 16-byte aligned
// tensors); otherwise, and for chunk == 0, the sequential kernel of gdr_sequential.cuh.
#include <cstdint>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gated_delta_rule.cuh"
#include "kernels/cuda/gdr_sequential.cuh"
#include "kernels/ops.h"

namespace gdn::cuda {

namespace {
GdrSeqShape ShapeOf(const Tensor& q, const Tensor& v, const Tensor& gamma, const Tensor& beta) {
  CHECK(q.rank() == 4 && v.rank() == 4) << "q " << ShapeString(q.shape()) << " v "
                                        << ShapeString(v.shape());
  for (int64_t x : {q.dim(0), q.dim(1), q.dim(2), v.dim(2), q.dim(3), v.dim(3)})
    CHECK_LE(x, std::numeric_limits<int>::max());
  GdrSeqShape s{static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)), static_cast<int>(q.dim(2)),
                static_cast<int>(v.dim(2)), static_cast<int>(q.dim(3)), static_cast<int>(v.dim(3))};
  CHECK(v.dim(0) == s.B && v.dim(1) == s.T && s.HV % s.H == 0);
  CHECK(gamma.numel() == int64_t{s.B} * s.T * s.HV && beta.numel() == gamma.numel());
  for (const Tensor* t : {&q, &v, &gamma, &beta}) CheckF32(*t, "GatedDeltaRule");
  return s;
}
// Whether the chunked kernel takes these sizes and every tensor's alignment.
bool UseChunked(int64_t chunk, const GdrSeqShape& s, std::initializer_list<const Tensor*> tensors) {
  if (chunk <= 0) return false;
  for (int d : {s.dk, s.dv})
    if (d % 64 != 0 || d > 256) return false;
  for (const Tensor* t : tensors)
    if (reinterpret_cast<uintptr_t>(t->raw()) % 16 != 0) return false;
  return true;
}

GdrShape Chunked(const GdrSeqShape& s) { return GdrShape{s.B, s.T, s.H, s.HV, s.dk, s.dv}; }

// The chunked kernel's block products follow the matrix products' precision: split-bf16 tensor
// cores in the bf16 mode (2e-5 relative at most, far inside its band), fp32 FMA in the float32
// mode.
GdrProducts Products() {
  return ops::GetMatmulPrecision() == ops::MatmulPrecision::kBfloat16 ? GdrProducts::kSplitBf16
                                                                      : GdrProducts::kFloat32;
}
}  // namespace

void GatedDeltaRuleForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma,
                           const Tensor& beta, double scale, int64_t chunk, const Tensor& o,
                           const Tensor& final_state) {
  const GdrSeqShape s = ShapeOf(q, v, gamma, beta);
  CheckSame(q, k, "GatedDeltaRuleForward");
  CheckSame(v, o, "GatedDeltaRuleForward");
  CHECK_GE(chunk, 0);
  float* state = nullptr;
  if (final_state.defined()) {
    CheckF32(final_state, "GatedDeltaRuleForward");
    CHECK_EQ(final_state.numel(), int64_t{s.B} * s.HV * s.dk * s.dv);
    state = F32(final_state);
  }
  if (UseChunked(chunk, s, {&q, &k, &v, &o})) {
    GdrForward(Chunked(s), F32(q), F32(k), F32(v), F32(gamma), F32(beta), static_cast<float>(scale),
               F32(o), state, Stream(), Products());
    CUDA_CHECK_LAUNCH();
    return;
  }
  GdrSequentialForward(s, F32(q), F32(k), F32(v), F32(gamma), F32(beta),
                       static_cast<float>(scale), F32(o), state, Stream());
}

void GatedDeltaRuleBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk,
                            const Tensor& d_o, const Tensor& dq, const Tensor& dk,
                            const Tensor& dv, const Tensor& dgamma, const Tensor& dbeta) {
  const GdrSeqShape s = ShapeOf(q, v, gamma, beta);
  CheckSame(q, k, "GatedDeltaRuleBackward");
  CheckSame(q, dq, "GatedDeltaRuleBackward");
  CheckSame(k, dk, "GatedDeltaRuleBackward");
  CheckSame(v, dv, "GatedDeltaRuleBackward");
  CheckSame(v, d_o, "GatedDeltaRuleBackward");
  CheckSame(gamma, dgamma, "GatedDeltaRuleBackward");
  CheckSame(beta, dbeta, "GatedDeltaRuleBackward");
  CHECK_GE(chunk, 0);
  if (UseChunked(chunk, s, {&q, &k, &v, &d_o, &dq, &dk, &dv})) {
    GdrBackward(Chunked(s), F32(q), F32(k), F32(v), F32(gamma), F32(beta),
                static_cast<float>(scale), F32(d_o), F32(dq), F32(dk), F32(dv), F32(dgamma),
                F32(dbeta), Stream(), Products());
    CUDA_CHECK_LAUNCH();
    return;
  }
  Tensor workspace =
      Tensor::Empty({GdrSequentialBackwardWorkspace(s)}, DType::kF32, Device::kCUDA);
  GdrSequentialBackward(s, F32(q), F32(k), F32(v), F32(gamma), F32(beta),
                        static_cast<float>(scale), F32(d_o), F32(dq), F32(dk), F32(dv),
                        F32(dgamma), F32(dbeta), F32(workspace), Stream());
}

}  // namespace gdn::cuda
