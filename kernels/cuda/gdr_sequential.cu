// The sequential gated delta rule on CUDA (see gdr_sequential.cuh). The recurrence acts on each
// column c of the state separately given k_t, q_t and the gates, so a thread owns columns and
// loops over rows d in the CPU's order; the backward's sums over columns (dq, dk) are warp
// reductions over a row, its scalars (dbeta, dgamma) block reductions.
#include "kernels/cuda/gdr_sequential.cuh"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace gdn::cuda {

namespace {

constexpr int kGdrThreads = 128;
constexpr int kBlock = 64;  // backward: a state checkpoint every kBlock steps, recomputed inside

struct Idx {
  int T, H, HV, dk, dv, group;
  __device__ int64_t qk(int b, int t, int h) const { return ((int64_t{b} * T + t) * H + h) * dk; }
  __device__ int64_t vo(int b, int t, int hv) const { return ((int64_t{b} * T + t) * HV + hv) * dv; }
  __device__ int64_t gb(int b, int t, int hv) const { return (int64_t{b} * T + t) * HV + hv; }
};

// One block per (b, value head); S [dk][dv] in shared memory.
__global__ void ForwardKernel(Idx ix, const float* q, const float* k, const float* v,
                             const float* gamma, const float* beta, float scale, float* o,
                             float* final_state) {
  extern __shared__ float S[];
  const int b = blockIdx.x / ix.HV, hv = blockIdx.x % ix.HV, h = hv / ix.group;
  const int dk = ix.dk, dv = ix.dv;
  for (int c = threadIdx.x; c < dv; c += blockDim.x)
    for (int d = 0; d < dk; ++d) S[d * dv + c] = 0;
  for (int t = 0; t < ix.T; ++t) {
    const float* kt = k + ix.qk(b, t, h);
    const float* qt = q + ix.qk(b, t, h);
    const float* vt = v + ix.vo(b, t, hv);
    float* ot = o + ix.vo(b, t, hv);
    const float alpha = expf(gamma[ix.gb(b, t, hv)]), bt = beta[ix.gb(b, t, hv)];
    for (int c = threadIdx.x; c < dv; c += blockDim.x) {
      // S = alpha S; ks = S^T k; u = beta (v - ks); S += k u^T; o = scale S^T q
      float ks = 0;
      for (int d = 0; d < dk; ++d) {
        S[d * dv + c] *= alpha;
        ks += kt[d] * S[d * dv + c];
      }
      const float u = bt * (vt[c] - ks);
      float oc = 0;
      for (int d = 0; d < dk; ++d) {
        S[d * dv + c] += kt[d] * u;
        oc += (scale * qt[d]) * S[d * dv + c];
      }
      ot[c] = oc;
    }
  }
  if (final_state) {
    float* fs = final_state + (int64_t{b} * ix.HV + hv) * dk * dv;
    for (int c = threadIdx.x; c < dv; c += blockDim.x)
      for (int d = 0; d < dk; ++d) fs[d * dv + c] = S[d * dv + c];
  }
}

// One step of the recurrence on this thread's columns, as the CPU backward writes it:
// r = v - alpha S^T k, u = beta r, Sn = alpha S + k u^T (S, Sn in global scratch).
__device__ void Step(const Idx& ix, int b, int t, int h, int hv, const float* k, const float* v,
                     const float* gamma, const float* beta, const float* S, float* Sn, float* r,
                     float* u) {
  const float* kt = k + ix.qk(b, t, h);
  const float* vt = v + ix.vo(b, t, hv);
  const float alpha = expf(gamma[ix.gb(b, t, hv)]), bt = beta[ix.gb(b, t, hv)];
  const int dk = ix.dk, dv = ix.dv;
  for (int c = threadIdx.x; c < dv; c += blockDim.x) {
    float ks = 0;
    for (int d = 0; d < dk; ++d) ks += kt[d] * S[d * dv + c];
    const float rc = vt[c] - alpha * ks, uc = bt * rc;
    r[c] = rc;
    u[c] = uc;
    for (int d = 0; d < dk; ++d) Sn[d * dv + c] = alpha * S[d * dv + c] + kt[d] * uc;
  }
}

// One block per (b, key head): the value heads of the group run one after another, so the block
// owns its rows of dq and dk (no atomics). Shared memory: D = dL/dS [dk][dv], du [dv].
// workspace (per block): checkpoints [nblocks][dk*dv], states of one block [kBlock+1][dk*dv],
// r and u of one block [kBlock][dv] each.
__global__ void BackwardKernel(Idx ix, const float* q, const float* k, const float* v,
                               const float* gamma, const float* beta, float scale,
                               const float* d_o, float* dq, float* dk_out, float* dv_out,
                               float* dgamma, float* dbeta, float* workspace,
                               int64_t workspace_per_block) {
  extern __shared__ float smem[];
  __shared__ float red[32];
  const int dk = ix.dk, dv = ix.dv, SZ = dk * dv;
  float* D = smem;
  float* du_sh = smem + SZ;
  const int b = blockIdx.x / ix.H, h = blockIdx.x % ix.H;
  const int nblocks = (ix.T + kBlock - 1) / kBlock;
  float* ckpt = workspace + blockIdx.x * workspace_per_block;
  float* blk = ckpt + int64_t{nblocks} * SZ;
  float* rblk = blk + int64_t{kBlock + 1} * SZ;
  float* ublk = rblk + kBlock * dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  for (int64_t i = threadIdx.x; i < int64_t{ix.T} * dk; i += blockDim.x) {
    const int t = static_cast<int>(i / dk), d = static_cast<int>(i % dk);
    dq[ix.qk(b, t, h) + d] = 0;
    dk_out[ix.qk(b, t, h) + d] = 0;
  }
  __syncthreads();

  for (int hv = h * ix.group; hv < (h + 1) * ix.group; ++hv) {
    // Forward pass storing the state at each block start (the step reads S, writes blk[1]).
    for (int c = threadIdx.x; c < dv; c += blockDim.x)
      for (int d = 0; d < dk; ++d) blk[d * dv + c] = 0;
    for (int t = 0; t < ix.T; ++t) {
      if (t % kBlock == 0) {
        float* cp = ckpt + int64_t{t / kBlock} * SZ;
        for (int c = threadIdx.x; c < dv; c += blockDim.x)
          for (int d = 0; d < dk; ++d) cp[d * dv + c] = blk[d * dv + c];
      }
      Step(ix, b, t, h, hv, k, v, gamma, beta, blk, blk + SZ, rblk, ublk);
      for (int c = threadIdx.x; c < dv; c += blockDim.x)
        for (int d = 0; d < dk; ++d) blk[d * dv + c] = blk[SZ + d * dv + c];
    }
    for (int c = threadIdx.x; c < dv; c += blockDim.x)
      for (int d = 0; d < dk; ++d) D[d * dv + c] = 0;
    __syncthreads();

    for (int bl = nblocks - 1; bl >= 0; --bl) {
      const int t0 = bl * kBlock, len = min(kBlock, ix.T - t0);
      // Recompute the block's states S_{t0-1+l} (blk[l]) and r, u from its checkpoint.
      const float* cp = ckpt + int64_t{bl} * SZ;
      for (int c = threadIdx.x; c < dv; c += blockDim.x)
        for (int d = 0; d < dk; ++d) blk[d * dv + c] = cp[d * dv + c];
      for (int l = 0; l < len; ++l)
        Step(ix, b, t0 + l, h, hv, k, v, gamma, beta, blk + int64_t{l} * SZ,
             blk + int64_t{l + 1} * SZ, rblk + l * dv, ublk + l * dv);
      __syncthreads();  // rows below read other threads' columns

      for (int l = len - 1; l >= 0; --l) {
        const int t = t0 + l;
        const float* Sp = blk + int64_t{l} * SZ;      // S_{t-1}
        const float* St = blk + int64_t{l + 1} * SZ;  // S_t
        const float* r = rblk + l * dv;
        const float* u = ublk + l * dv;
        const float* kt = k + ix.qk(b, t, h);
        const float* qt = q + ix.qk(b, t, h);
        const float* dot = d_o + ix.vo(b, t, hv);
        const float alpha = expf(gamma[ix.gb(b, t, hv)]), bt = beta[ix.gb(b, t, hv)];
        // Columns: D += s q do^T; du = D^T k; dv = beta du.
        float dbeta_part = 0;
        for (int c = threadIdx.x; c < dv; c += blockDim.x) {
          for (int d = 0; d < dk; ++d) D[d * dv + c] += (scale * qt[d]) * dot[c];
          float du = 0;
          for (int d = 0; d < dk; ++d) du += kt[d] * D[d * dv + c];
          du_sh[c] = du;
          dv_out[ix.vo(b, t, hv) + c] = bt * du;
          dbeta_part += du * r[c];
        }
        __syncthreads();
        // Rows: dq = s S_t do; dk = D u - beta alpha S_{t-1} du.
        for (int d = warp; d < dk; d += warps) {
          float a = 0, e = 0, f = 0;
          for (int c = lane; c < dv; c += 32) {
            a += St[d * dv + c] * dot[c];
            e += D[d * dv + c] * u[c];
            f += Sp[d * dv + c] * du_sh[c];
          }
          a = WarpSum(a);
          e = WarpSum(e);
          f = WarpSum(f);
          if (lane == 0) {
            dq[ix.qk(b, t, h) + d] += scale * a;
            dk_out[ix.qk(b, t, h) + d] += e - bt * alpha * f;
          }
        }
        const float dbeta_t = BlockReduce(dbeta_part, SumOp(), red);  // also a barrier for D
        // Columns: D -= beta k du^T; dalpha = <D, S_{t-1}>; D *= alpha.
        float dalpha_part = 0;
        for (int c = threadIdx.x; c < dv; c += blockDim.x) {
          const float duc = du_sh[c];
          for (int d = 0; d < dk; ++d) {
            const float Dn = D[d * dv + c] + (-bt * kt[d]) * duc;
            dalpha_part += Dn * Sp[d * dv + c];
            D[d * dv + c] = alpha * Dn;
          }
        }
        const float dalpha = BlockReduce(dalpha_part, SumOp(), red);
        if (threadIdx.x == 0) {
          dbeta[ix.gb(b, t, hv)] = dbeta_t;
          dgamma[ix.gb(b, t, hv)] = alpha * dalpha;
        }
      }
      __syncthreads();  // blk is rewritten by the next block's recomputation
    }
    __syncthreads();
  }
}

Idx MakeIdx(const GdrSeqShape& s) {
  CHECK(s.B > 0 && s.T > 0 && s.H > 0 && s.HV > 0 && s.dk > 0 && s.dv > 0 && s.HV % s.H == 0)
      << "gated delta rule shape B=" << s.B << " T=" << s.T << " H=" << s.H << " HV=" << s.HV
      << " dk=" << s.dk << " dv=" << s.dv;
  return Idx{s.T, s.H, s.HV, s.dk, s.dv, s.HV / s.H};
}

// Dynamic shared memory above 48 KiB needs an opt-in per kernel; the state must fit in it.
void SetSharedMemory(const void* kernel, size_t bytes) {
  int device = CurrentDevice(), max_optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  CHECK_LE(bytes, static_cast<size_t>(max_optin) - 1024)
      << "gated delta rule state too large for shared memory (" << bytes << " bytes)";
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

}  // namespace

void GdrSequentialForward(const GdrSeqShape& s, const float* q, const float* k, const float* v,
                          const float* gamma, const float* beta, float scale, float* o,
                          float* final_state, cudaStream_t stream) {
  const Idx ix = MakeIdx(s);
  const size_t smem = sizeof(float) * s.dk * s.dv;
  SetSharedMemory(reinterpret_cast<const void*>(&ForwardKernel), smem);
  ForwardKernel<<<s.B * s.HV, kGdrThreads, smem, stream>>>(ix, q, k, v, gamma, beta, scale, o,
                                                           final_state);
  CUDA_CHECK_LAUNCH();
}

int64_t GdrSequentialBackwardWorkspace(const GdrSeqShape& s) {
  const int64_t nblocks = (s.T + kBlock - 1) / kBlock, sz = int64_t{s.dk} * s.dv;
  return int64_t{s.B} * s.H * ((nblocks + kBlock + 1) * sz + 2 * kBlock * s.dv);
}

void GdrSequentialBackward(const GdrSeqShape& s, const float* q, const float* k, const float* v,
                           const float* gamma, const float* beta, float scale, const float* d_o,
                           float* dq, float* dk, float* dv, float* dgamma, float* dbeta,
                           float* workspace, cudaStream_t stream) {
  const Idx ix = MakeIdx(s);
  const size_t smem = sizeof(float) * (s.dk * s.dv + s.dv);
  SetSharedMemory(reinterpret_cast<const void*>(&BackwardKernel), smem);
  const int64_t per_block = GdrSequentialBackwardWorkspace(s) / (int64_t{s.B} * s.H);
  BackwardKernel<<<s.B * s.H, kGdrThreads, smem, stream>>>(ix, q, k, v, gamma, beta, scale, d_o,
                                                           dq, dk, dv, dgamma, dbeta, workspace,
                                                           per_block);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gdn::cuda
