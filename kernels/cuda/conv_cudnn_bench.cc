// The mixer's short causal convolution (depthwise, kernel 4) on the reference model's shapes
// (8 x 2048 tokens; 768 channels for q and for k, 1536 for v), bf16 activations with float32
// accumulation as the bf16 mode runs it: gdn's kernels against cuDNN's grouped convolution, the
// one form cuDNN offers for it (gdn uses cuDNN only where it measurably beats its own kernel).
// cuDNN pads both sides (the first T of its T + K - 1 outputs are the causal ones) and has no
// SiLU epilogue for a grouped convolution, so it is timed alone and with cudnnActivationForward /
// -Backward (swish) after / before it; gdn does conv + SiLU (+ the q/k L2 norm) in one launch
// each way. First checks that both compute the same convolution (the forward against gdn's, the
// backward through <conv(x), g> = <x, dX> = <w, dW>) and exits 1 if not.
//   conv_cudnn_bench [iterations]   (default 50; prints medians in microseconds)
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "runtime/cuda_check.h"
#include "runtime/tensor.h"

namespace gdn {
namespace {

#define CUDNN_CHECK(call)                                                                      \
  do {                                                                                         \
    const cudnnStatus_t s_ = (call);                                                           \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                                          \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudnnGetErrorString(s_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

constexpr Device kGpu = Device::kCUDA;

// Uniform values in [lo, hi) rounded to bf16, so that float32 and bf16 copies hold the same.
Tensor RandBf16Exact(const Shape& shape, std::mt19937_64& gen, double lo = -1, double hi = 1) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  std::uniform_real_distribution<float> u(lo, hi);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(gen);
  return t.To(DType::kBF16).To(DType::kF32);
}

// Median milliseconds of `iters` runs of fn on gdn's stream (after two warm-up runs).
double MedianMs(int iters, const std::function<void()>& fn) {
  const cudaStream_t stream = cuda::Stream();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  fn(), fn();
  std::vector<float> ms(iters);
  for (float& m : ms) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&m, start, stop));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[iters / 2];
}

double Dot(const Tensor& a, const Tensor& b) {  // CPU float32 tensors of the same size
  const float *pa = a.data<float>(), *pb = b.data<float>();
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double(pa[i]) * pb[i];
  return s;
}

Tensor Host(const Tensor& t) { return t.To(Device::kCPU).To(DType::kF32); }

struct Cudnn {
  cudnnHandle_t handle;
  cudnnTensorDescriptor_t x, y;  // [B, C, 1, T] and [B, C, 1, T + K - 1], NHWC: gdn's [B, T, C]
  cudnnFilterDescriptor_t w;     // [C, 1, 1, K]: gdn's [C, K]
  cudnnConvolutionDescriptor_t conv;
  cudnnActivationDescriptor_t swish;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t workspace_bytes = 0;
  void* workspace = nullptr;
};

Cudnn MakeCudnn(int B, int T, int C, int K) {
  Cudnn c;
  CUDNN_CHECK(cudnnCreate(&c.handle));
  CUDNN_CHECK(cudnnSetStream(c.handle, cuda::Stream()));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.y));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&c.w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c.conv));
  CUDNN_CHECK(cudnnCreateActivationDescriptor(&c.swish));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, B, C, 1, T));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(c.w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, C, 1, 1, K));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c.conv, 0, K - 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionGroupCount(c.conv, C));
  int n, ch, h, w;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c.conv, c.x, c.w, &n, &ch, &h, &w));
  if (n != B || ch != C || h != 1 || w != T + K - 1) {
    std::fprintf(stderr, "unexpected cuDNN output shape %d %d %d %d\n", n, ch, h, w);
    std::exit(1);
  }
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, B, C, 1, w));
  CUDNN_CHECK(cudnnSetActivationDescriptor(c.swish, CUDNN_ACTIVATION_SWISH, CUDNN_NOT_PROPAGATE_NAN,
                                           0.0));
  CUDNN_CHECK(cudnnSetActivationDescriptorSwishBeta(c.swish, 1.0));
  // cuDNN's own choice by timing every algorithm (the fastest that succeeds).
  int got = 0;
  cudnnConvolutionFwdAlgoPerf_t f[8];
  CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(c.handle, c.x, c.w, c.conv, c.y, 8, &got, f));
  cudnnConvolutionBwdDataAlgoPerf_t d[8];
  CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(c.handle, c.w, c.y, c.conv, c.x, 8, &got,
                                                        d));
  cudnnConvolutionBwdFilterAlgoPerf_t g[8];
  CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(c.handle, c.x, c.y, c.conv, c.w, 8, &got,
                                                          g));
  if (f[0].status != CUDNN_STATUS_SUCCESS || d[0].status != CUDNN_STATUS_SUCCESS ||
      g[0].status != CUDNN_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuDNN has no algorithm for this grouped convolution\n");
    std::exit(1);
  }
  c.fwd = f[0].algo, c.bwd_data = d[0].algo, c.bwd_filter = g[0].algo;
  c.workspace_bytes = std::max({f[0].memory, d[0].memory, g[0].memory});
  if (c.workspace_bytes) CUDA_CHECK(cudaMalloc(&c.workspace, c.workspace_bytes));
  std::printf("  cuDNN's algorithms: forward %d, backward data %d, backward filter %d (workspace "
              "%zu bytes)\n", int(c.fwd), int(c.bwd_data), int(c.bwd_filter), c.workspace_bytes);
  return c;
}

// One shape: checks, then times. Returns false when a check fails.
bool Run(int B, int T, int C, int K, int iters, std::mt19937_64& gen) {
  std::printf("B=%d T=%d channels=%d K=%d (bf16 activations)\n", B, T, C, K);
  const int Tc = T + K - 1;  // cuDNN's output length
  const float one = 1, zero = 0;
  const Tensor x = RandBf16Exact({B, T, C}, gen, -3, 3), w = RandBf16Exact({C, K}, gen);
  const Tensor xd = x.To(DType::kBF16).To(kGpu), wd = w.To(kGpu);
  const Tensor wd16 = w.To(DType::kBF16).To(kGpu);
  // g: the gradient at cuDNN's outputs, zero at the K - 1 positions past T of each sequence.
  Tensor g = RandBf16Exact({B, Tc, C}, gen);
  for (int b = 0; b < B; ++b)
    for (int64_t i = (int64_t(b) * Tc + T) * C; i < int64_t(b + 1) * Tc * C; ++i) g.set(i, 0.0);
  const Tensor gd = g.To(DType::kBF16).To(kGpu);
  const Tensor dy = RandBf16Exact({B, T, C}, gen).To(DType::kBF16).To(kGpu);

  Cudnn c = MakeCudnn(B, T, C, K);
  const Tensor conv = Tensor::Empty({B, Tc, C}, DType::kBF16, kGpu);
  const Tensor act = Tensor::Empty({B, Tc, C}, DType::kBF16, kGpu);
  const Tensor dact = Tensor::Empty({B, Tc, C}, DType::kBF16, kGpu);
  const Tensor dx_cudnn = Tensor::Empty({B, T, C}, DType::kBF16, kGpu);
  const Tensor dw_cudnn = Tensor::Empty({C, K}, DType::kBF16, kGpu);
  auto cudnn_conv = [&] {
    CUDNN_CHECK(cudnnConvolutionForward(c.handle, &one, c.x, xd.raw(), c.w, wd16.raw(), c.conv,
                                        c.fwd, c.workspace, c.workspace_bytes, &zero, c.y,
                                        conv.raw()));
  };
  auto cudnn_swish = [&] {
    CUDNN_CHECK(cudnnActivationForward(c.handle, c.swish, &one, c.y, conv.raw(), &zero, c.y,
                                       act.raw()));
  };
  auto cudnn_swish_backward = [&] {  // the gradient g at act, into dact
    CUDNN_CHECK(cudnnActivationBackward(c.handle, c.swish, &one, c.y, act.raw(), c.y, gd.raw(),
                                        c.y, conv.raw(), &zero, c.y, dact.raw()));
  };
  auto cudnn_backward = [&](const Tensor& grad) {
    CUDNN_CHECK(cudnnConvolutionBackwardData(c.handle, &one, c.w, wd16.raw(), c.y, grad.raw(),
                                             c.conv, c.bwd_data, c.workspace, c.workspace_bytes,
                                             &zero, c.x, dx_cudnn.raw()));
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(c.handle, &one, c.x, xd.raw(), c.y, grad.raw(),
                                               c.conv, c.bwd_filter, c.workspace,
                                               c.workspace_bytes, &zero, c.w, dw_cudnn.raw()));
  };

  // Checks. gdn's float32 output against cuDNN's conv + swish at the first T positions.
  const Tensor y32 = Tensor::Empty({B, T, C}, DType::kF32, kGpu);
  ops::CausalConvSiluForward(xd, wd, y32);
  cudnn_conv(), cudnn_swish();
  const Tensor ours = Host(y32), theirs = Host(act);
  double worst = 0, largest = 0;
  for (int b = 0; b < B; ++b)
    for (int64_t i = 0; i < int64_t(T) * C; ++i) {
      const double o = ours.data<float>()[b * int64_t(T) * C + i];
      worst = std::max(worst, std::abs(o - theirs.data<float>()[b * int64_t(Tc) * C + i]));
      largest = std::max(largest, std::abs(o));
    }
  const double fwd_err = worst / largest;
  // cuDNN's backward is its forward's transpose: <conv(x), g> = <x, dX> = <w, dW>.
  cudnn_backward(gd);
  const double yg = Dot(Host(conv), g), xdx = Dot(x, Host(dx_cudnn)), wdw = Dot(w, Host(dw_cudnn));
  const double bwd_err = std::max(std::abs(xdx - yg), std::abs(wdw - yg)) / std::abs(yg);
  std::printf("  check: forward max error %.2e of the largest output (gdn float32 vs cuDNN bf16); "
              "backward <x,dX> and <w,dW> within %.2e of <conv(x),g>\n", fwd_err, bwd_err);
  const bool ok = fwd_err < 1e-2 && bwd_err < 1e-2;
  if (!ok) std::printf("  CHECK FAILED (bound 1e-2)\n");

  // Timings: gdn's launches against cuDNN's.
  const Tensor y16 = Tensor::Empty({B, T, C}, DType::kBF16, kGpu);
  const Tensor dx16 = Tensor::Empty({B, T, C}, DType::kBF16, kGpu);
  const Tensor dw32 = Tensor::Zeros({C, K}, DType::kF32, kGpu);
  const Tensor rnorm = Tensor::Empty({int64_t(B) * T * (C / 128)}, DType::kF32, kGpu);
  const double us = 1e3;
  const double ours_fwd = us * MedianMs(iters, [&] { ops::CausalConvSiluForward(xd, wd, y16); });
  const double ours_fwd_l2 = us * MedianMs(iters, [&] {
    ops::CausalConvSiluL2NormForward(xd, wd, 128, 1e-6, y16, rnorm);
  });
  const double ours_bwd = us * MedianMs(iters, [&] {
    ops::CausalConvSiluBackward(xd, wd, dy, dx16, dw32);
  });
  const double cd_conv = us * MedianMs(iters, cudnn_conv);
  const double cd_fwd = us * MedianMs(iters, [&] { cudnn_conv(), cudnn_swish(); });
  const double cd_conv_bwd = us * MedianMs(iters, [&] { cudnn_backward(gd); });
  const double cd_bwd = us * MedianMs(iters, [&] { cudnn_swish_backward(), cudnn_backward(dact); });
  std::printf("  forward   gdn conv+SiLU %7.1f us (+ L2 norm: %7.1f) | cuDNN conv %7.1f us, "
              "conv+swish %7.1f us | gdn %.2fx faster\n",
              ours_fwd, ours_fwd_l2, cd_conv, cd_fwd, cd_fwd / ours_fwd);
  std::printf("  backward  gdn conv+SiLU %7.1f us                  | cuDNN data+filter %7.1f us, "
              "+swish %7.1f us | gdn %.2fx faster\n",
              ours_bwd, cd_conv_bwd, cd_bwd, cd_bwd / ours_bwd);
  CUDA_CHECK(cudaFree(c.workspace));
  cudnnDestroyActivationDescriptor(c.swish);
  cudnnDestroyConvolutionDescriptor(c.conv);
  cudnnDestroyFilterDescriptor(c.w);
  cudnnDestroyTensorDescriptor(c.y);
  cudnnDestroyTensorDescriptor(c.x);
  cudnnDestroy(c.handle);
  return ok;
}

}  // namespace
}  // namespace gdn

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  std::string why;
  if (iters < 1 || !gdn::cuda::GpuAvailable(&why)) {
    std::fprintf(stderr, "%s\n", iters < 1 ? "usage: conv_cudnn_bench [iterations >= 1]"
                                           : ("no usable GPU: " + why).c_str());
    return 2;
  }
  std::printf("cuDNN %zu (built against %d.%d.%d), %s\n", cudnnGetVersion(), CUDNN_MAJOR,
              CUDNN_MINOR, CUDNN_PATCHLEVEL, gdn::cuda::DescribeCurrentDevice().c_str());
  std::mt19937_64 gen(17);
  bool ok = true;
  for (const int C : {768, 1536}) ok = gdn::Run(8, 2048, C, 4, iters, gen) && ok;
  return ok ? 0 : 1;
}
