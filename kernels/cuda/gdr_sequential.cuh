// The gated delta rule on CUDA, the plain sequential form: one thread block walks the tokens of one
// (batch, value head) in order, keeping the dk x dv state in shared memory in float32. Slow (no
// parallelism over time) but a direct transcription of the recurrence, so it is the reference on
// the GPU (the chunk == 0 path) and the fallback until the chunked kernel lands.
// Semantics, layouts and the recurrence as GdrRecurrentForward/Backward in
// kernels/cpu/gated_delta_rule.h, with zero initial state:
//   q, k: [B, T, H, dk]; v, o, d_o, dv: [B, T, HV, dv]; gamma, beta, dgamma, dbeta: [B, T, HV];
//   final_state [B, HV, dk, dv] or null. Value head j reads key head j / (HV / H).
// Gradients are overwritten. All pointers are device pointers; work is queued on `stream`.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace gdn::cuda {

struct GdrSeqShape {
  int B, T, H, HV, dk, dv;
};

void GdrSequentialForward(const GdrSeqShape& s, const float* q, const float* k, const float* v,
                          const float* gamma, const float* beta, float scale, float* o,
                          float* final_state, cudaStream_t stream);

// Scratch floats the backward needs: per (batch, key head), a state checkpoint every 64 steps and the
// 65 states of one 64-step block, (ceil(T/64) + 65) * dk * dv + 128 * dv floats (e.g. 6.4 MB for
// T = 2048, dk = dv = 128). The state must fit in shared memory: dk * dv * 4 bytes up to ~220 KiB.
int64_t GdrSequentialBackwardWorkspace(const GdrSeqShape& s);

void GdrSequentialBackward(const GdrSeqShape& s, const float* q, const float* k, const float* v,
                           const float* gamma, const float* beta, float scale, const float* d_o,
                           float* dq, float* dk, float* dv, float* dgamma, float* dbeta,
                           float* workspace, cudaStream_t stream);

}  // namespace gdn::cuda
