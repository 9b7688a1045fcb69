// The gated delta rule op on CUDA tensors (twin of kernels/cpu/gdr_op.cc): shape checks, then
// chunk > 0: the chunked kernel of gated_delta_rule.cuh (its chunk is always 64: the chunk size
// changes only rounding) where its sizes allow (dk, dv multiples of 64 up to 256, 16-byte aligned
// tensors); otherwise, and for chunk == 0, the sequential kernel of gdr_sequential.cuh. q, k, v,
// o (and d_o, dq, dk, dv) are all float32 or all bf16 (the bf16 mode's [stored] inputs and
// [operand] outputs); the sequential kernel takes bf16 ones through float32 copies.
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
  for (const Tensor* t : {&gamma, &beta}) CheckF32(*t, "GatedDeltaRule");
  CHECK(q.dtype() == DType::kF32 || q.dtype() == DType::kBF16)
      << "GatedDeltaRule: q, k, v must be float32 or bf16, got " << DTypeName(q.dtype());
  CHECK(q.device() == Device::kCUDA && v.device() == Device::kCUDA);
  return s;
}

using Bf16 = __nv_bfloat16;
const Bf16* B16(const Tensor& t) { return static_cast<const Bf16*>(t.raw()); }
Bf16* B16Out(const Tensor& t) { return static_cast<Bf16*>(t.raw()); }

// Whether the chunked kernel takes these sizes.
bool ChunkedSizes(int64_t chunk, int64_t dk, int64_t dv) {
  return chunk > 0 && dk % 64 == 0 && dk <= 256 && dv % 64 == 0 && dv <= 256;
}

// Whether the chunked kernel takes these sizes and every tensor's alignment.
bool UseChunked(int64_t chunk, const GdrSeqShape& s, std::initializer_list<const Tensor*> tensors) {
  if (!ChunkedSizes(chunk, s.dk, s.dv)) return false;
  for (const Tensor* t : tensors)
    if (reinterpret_cast<uintptr_t>(t->raw()) % 16 != 0) return false;
  return true;
}

GdrShape Chunked(const GdrSeqShape& s) { return GdrShape{s.B, s.T, s.H, s.HV, s.dk, s.dv}; }

// A saved forward's buffer (see op_set.inc): only the chunked kernel has one, so both passes must
// take it.
const float* SavedOf(const Tensor& saved, bool chunked, const GdrSeqShape& s, const char* fn) {
  if (!saved.defined()) return nullptr;
  CHECK(chunked) << fn << ": a saved forward needs the chunked kernel (chunk > 0; dk, dv multiples "
                 << "of 64 up to 256; 16-byte aligned tensors)";
  CheckF32(saved, fn);
  CHECK(saved.device() == Device::kCUDA) << fn << ": saved must be a CUDA tensor";
  CHECK_EQ(static_cast<size_t>(saved.numel()), GdrSavedFloats(Chunked(s)))
      << fn << ": saved has the wrong size for this shape";
  return F32(saved);
}

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
                           const Tensor& final_state, const Tensor& saved) {
  const GdrSeqShape s = ShapeOf(q, v, gamma, beta);
  CheckSame(q, k, "GatedDeltaRuleForward");
  CHECK(q.dtype() == v.dtype()) << "GatedDeltaRuleForward: q and v of one type (float32 or bf16)";
  CheckSame(v, o, "GatedDeltaRuleForward");
  CHECK_GE(chunk, 0);
  float* state = nullptr;
  if (final_state.defined()) {
    CheckF32(final_state, "GatedDeltaRuleForward");
    CHECK_EQ(final_state.numel(), int64_t{s.B} * s.HV * s.dk * s.dv);
    state = F32(final_state);
  }
  const bool bf16 = q.dtype() == DType::kBF16;
  const float sc = static_cast<float>(scale);
  const bool chunked = UseChunked(chunk, s, {&q, &k, &v, &o});
  float* sv = const_cast<float*>(SavedOf(saved, chunked, s, "GatedDeltaRuleForward"));
  if (chunked) {
    if (bf16)
      GdrForward(Chunked(s), B16(q), B16(k), B16(v), F32(gamma), F32(beta), sc, B16Out(o), state,
                 Stream(), sv);
    else
      GdrForward(Chunked(s), F32(q), F32(k), F32(v), F32(gamma), F32(beta), sc, F32(o), state,
                 Stream(), Products(), sv);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (bf16) {  // the sequential kernel in float32
    const Tensor of = Tensor::Empty(o.shape(), DType::kF32, Device::kCUDA);
    GatedDeltaRuleForward(ToFloat32(q), ToFloat32(k), ToFloat32(v), gamma, beta, scale, chunk, of,
                          final_state);
    ToBf16(of, o);
    return;
  }
  GdrSequentialForward(s, F32(q), F32(k), F32(v), F32(gamma), F32(beta), sc, F32(o), state,
                       Stream());
}

void GatedDeltaRuleBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk,
                            const Tensor& d_o, const Tensor& dq, const Tensor& dk,
                            const Tensor& dv, const Tensor& dgamma, const Tensor& dbeta,
                            const Tensor& saved) {
  const GdrSeqShape s = ShapeOf(q, v, gamma, beta);
  CheckSame(q, k, "GatedDeltaRuleBackward");
  CHECK(q.dtype() == v.dtype()) << "GatedDeltaRuleBackward: q and v of one type (float32 or bf16)";
  CheckSame(q, dq, "GatedDeltaRuleBackward");
  CheckSame(k, dk, "GatedDeltaRuleBackward");
  CheckSame(v, dv, "GatedDeltaRuleBackward");
  CheckSame(v, d_o, "GatedDeltaRuleBackward");
  CheckSame(gamma, dgamma, "GatedDeltaRuleBackward");
  CheckSame(beta, dbeta, "GatedDeltaRuleBackward");
  CHECK_GE(chunk, 0);
  const bool bf16 = q.dtype() == DType::kBF16;
  const float sc = static_cast<float>(scale);
  const bool chunked = UseChunked(chunk, s, {&q, &k, &v, &d_o, &dq, &dk, &dv});
  const float* sv = SavedOf(saved, chunked, s, "GatedDeltaRuleBackward");
  if (chunked) {
    if (bf16)
      GdrBackward(Chunked(s), B16(q), B16(k), B16(v), F32(gamma), F32(beta), sc, B16(d_o),
                  B16Out(dq), B16Out(dk), B16Out(dv), F32(dgamma), F32(dbeta), Stream(), sv);
    else
      GdrBackward(Chunked(s), F32(q), F32(k), F32(v), F32(gamma), F32(beta), sc, F32(d_o),
                  F32(dq), F32(dk), F32(dv), F32(dgamma), F32(dbeta), Stream(), Products(), sv);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (bf16) {  // the sequential kernel in float32
    auto f32 = [](const Tensor& t) { return Tensor::Empty(t.shape(), DType::kF32, Device::kCUDA); };
    const Tensor dqf = f32(dq), dkf = f32(dk), dvf = f32(dv);
    GatedDeltaRuleBackward(ToFloat32(q), ToFloat32(k), ToFloat32(v), gamma, beta, scale, chunk,
                           ToFloat32(d_o), dqf, dkf, dvf, dgamma, dbeta);
    ToBf16(dqf, dq), ToBf16(dkf, dk), ToBf16(dvf, dv);
    return;
  }
  Tensor workspace =
      Tensor::Empty({GdrSequentialBackwardWorkspace(s)}, DType::kF32, Device::kCUDA);
  GdrSequentialBackward(s, F32(q), F32(k), F32(v), F32(gamma), F32(beta), sc, F32(d_o), F32(dq),
                        F32(dk), F32(dv), F32(dgamma), F32(dbeta), F32(workspace), Stream());
}

int64_t GatedDeltaRuleSavedFloats(const Tensor& q, const Tensor& v, int64_t chunk) {
  CHECK(q.rank() == 4 && v.rank() == 4) << "q " << ShapeString(q.shape()) << " v "
                                        << ShapeString(v.shape());
  if (!ChunkedSizes(chunk, q.dim(3), v.dim(3))) return 0;
  const GdrShape s{static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)),
                   static_cast<int>(q.dim(2)), static_cast<int>(v.dim(2)),
                   static_cast<int>(q.dim(3)), static_cast<int>(v.dim(3))};
  return static_cast<int64_t>(GdrSavedFloats(s));
}

}  // namespace gdn::cuda
