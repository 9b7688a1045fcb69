// The chunked gated delta rule on CUDA (chunk 64), forward and backward: the raw API that the
// CUDA op set's GatedDeltaRuleForward/Backward call. See shared/docs/gated-delta-rule.md for the
// math and kernels/cpu/gated_delta_rule.h for the CPU reference with the same contracts.
//
// Device pointers, row-major and contiguous:
//   q, k: [B, T, H, dk]; v, o, d_o, dv: [B, T, HV, dv]; gamma, beta, dgamma, dbeta: [B, T, HV]
//   (fp32); final_state: [B, HV, dk, dv] fp32 or nullptr.
// Value head j reads key head j / (HV / H). Zero initial state. Gradients are overwritten, not
// accumulated; dq and dk sum over the value heads of each key head. Everything is ordered on
// `stream`. The backward runs one kernel on a second stream, forked from and joined back to
// `stream`: one stream and event pair a process, made on the device of the first call, so calls
// must come from one host thread and one device (gdn drives one device a rank). Scratch memory is
// taken with cudaMallocAsync on `stream` (the device's default memory pool, whose release
// threshold is raised so repeated calls reuse it) and freed the same way.
// Supported sizes: dk and dv multiples of 64 up to 256, HV a multiple of H, any T >= 0; q, k, v,
// d_o and dv 16-byte aligned. Anything else aborts with a message naming the field.
// bf16 inputs and outputs use fp32 gates, state and accumulation; their block products run on
// the tensor cores with split operands (fp32-grade results before the bf16 output rounding).
// Scratch (fp32, per call): per-token W, U, V' and per-chunk states, plus T, per-chunk dL/dS,
// per-token Y and (HV > H) per-value-head dk in the backward: 0.67 GB forward, 1.1 GB backward at
// B=8, T=2048, H=HV=16, dk=dv=128.
// Saved forward: a forward given `saved` (GdrSavedFloats(shape) floats of device memory) also
// writes there what the backward reads of its work (chunk-start states, V' and T: 0.47 GB at the
// shape above); a backward given it reads them instead of re-running the forward's PrepKernel and
// StateKernel (about a fifth of forward+backward). Its results are the same bit for bit. It must
// come from a forward of the same shape, inputs and products (and the same GDR_CUDA_*_TC_MASK),
// and be left unchanged in between.
// fp32 inputs compute their block products as `products` says (below); the environment variables
// GDR_CUDA_TC_MASK / GDR_CUDA_FP32_TC_MASK override the choice per kernel (for comparisons; see
// gated_delta_rule.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>

namespace gdn::cuda {

struct GdrShape {
  int B, T, H, HV, dk, dv;  // HV = H * value heads per key head
};

// The block products of the fp32-input kernels: kFloat32, fp32 FMA (fp32-accurate: the float32
// mode's choice); kSplitBf16, the bf16 tensor cores with each fp32 operand split into two bf16
// parts (about 16 significant bits, up to 2e-5 relative; the bf16 mode's choice, being faster).
enum class GdrProducts { kFloat32, kSplitBf16 };

size_t GdrSavedFloats(const GdrShape& shape);

void GdrForward(const GdrShape& shape, const float* q, const float* k, const float* v,
                const float* gamma, const float* beta, float scale, float* o, float* final_state,
                cudaStream_t stream, GdrProducts products = GdrProducts::kFloat32,
                float* saved = nullptr);
void GdrBackward(const GdrShape& shape, const float* q, const float* k, const float* v,
                 const float* gamma, const float* beta, float scale, const float* d_o, float* dq,
                 float* dk, float* dv, float* dgamma, float* dbeta, cudaStream_t stream,
                 GdrProducts products = GdrProducts::kFloat32, const float* saved = nullptr);

void GdrForward(const GdrShape& shape, const __nv_bfloat16* q, const __nv_bfloat16* k,
                const __nv_bfloat16* v, const float* gamma, const float* beta, float scale,
                __nv_bfloat16* o, float* final_state, cudaStream_t stream,
                float* saved = nullptr);
void GdrBackward(const GdrShape& shape, const __nv_bfloat16* q, const __nv_bfloat16* k,
                 const __nv_bfloat16* v, const float* gamma, const float* beta, float scale,
                 const __nv_bfloat16* d_o, __nv_bfloat16* dq, __nv_bfloat16* dk,
                 __nv_bfloat16* dv, float* dgamma, float* dbeta, cudaStream_t stream,
                 const float* saved = nullptr);

}  // namespace gdn::cuda
