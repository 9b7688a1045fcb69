#include "launcher/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <omp.h>

#include "kernels/ops.h"
#include "model/config.h"
#include "model/lm.h"
#ifdef GDN_WITH_CUDA
#include "runtime/cuda_device.h"
#endif
#include "model/optimizer.h"
#include "runtime/rng.h"
#include "runtime/spec.h"

namespace gdn {

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Median rate of c = a b for square float32 matrices of size n.
double SgemmGflops(int64_t n) {
  Tensor a = Tensor::Empty({n, n}, DType::kF32), b = Tensor::Empty({n, n}, DType::kF32);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  ops::Fill(a, 0.5);
  ops::Fill(b, 0.25);
  ops::Matmul(a, false, b, false, c);  // warm-up: thread pool, page faults
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ops::Matmul(a, false, b, false, c);
    rates.push_back(2.0 * n * n * n / Seconds(t0) / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

absl::Status RunBench(const BenchOptions& o) {
  ExperimentSpec spec;
  FillDefaults(&spec);
  spec.mutable_model()->set_width(o.width);
  spec.mutable_model()->set_depth(o.depth);
  spec.mutable_model()->set_head_dim(o.head_dim);
  spec.mutable_model()->set_vocab_size(o.vocab);
  if (o.sequential) spec.mutable_model()->set_recurrence(ModelSpec::SEQUENTIAL);
  spec.mutable_parametrization()->set_base_width(o.width);

  if (auto s = ValidateModelSpec(spec); !s.ok()) return s;
  const Device device = o.cuda ? Device::kCUDA : Device::kCPU;
#ifdef GDN_WITH_CUDA
  std::string why;
  if (o.cuda && !cuda::GpuAvailable(&why))
    return absl::InvalidArgumentError(absl::StrCat("--device cuda: no GPU is usable: ", why));
#else
  if (o.cuda) return absl::InvalidArgumentError("--device cuda: this gdn was built without CUDA");
#endif
  if (o.bf16 && !o.cuda) return absl::InvalidArgumentError("--precision bf16 needs --device cuda");
  ops::SetMatmulPrecision(o.bf16 ? ops::MatmulPrecision::kBfloat16 : ops::MatmulPrecision::kFloat32);
  LanguageModel model(spec, DType::kF32, {}, nullptr, device);
  model.Initialize(0);
  Optimizer optimizer(spec.optimizer(), model.params());
  const ModelDims& d = model.dims();
  Tensor tokens = Tensor::Empty({o.batch, o.seq_len + 1}, DType::kI32);
  Rng rng(1);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = rng.UniformInt(d.vocab);

  std::printf("gdn bench: width %d, depth %d, heads %lld x (dk %lld, dv %lld), MLP %lld, vocab %lld, "
              "%.2fM parameters, batch %d x seq %d, %s on %s, %s recurrence, %d threads\n",
              o.width, o.depth, static_cast<long long>(d.heads), static_cast<long long>(d.dk),
              static_cast<long long>(d.dv), static_cast<long long>(d.mlp_hidden),
              static_cast<long long>(d.vocab), model.params().NumElements() / 1e6, o.batch,
              o.seq_len, o.bf16 ? "bf16 matrix products" : "float32", DeviceName(device), o.sequential ? "sequential" : "chunked", omp_get_max_threads());

  auto step = [&](int64_t i) {
    model.params().ZeroGrads();
    model.ForwardBackward(tokens);
    optimizer.Step(i + 1, 1e-4);
  };
  step(0);  // warm-up
  ops::EnableProfiling(true);
  std::vector<double> times;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step(i + 1);
    times.push_back(Seconds(t0));
  }
  ops::EnableProfiling(false);
  const auto profile = ops::TakeProfile();
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  const double tokens_per_step = static_cast<double>(o.batch) * o.seq_len;
  const double model_gflops = model.MatmulFlopsPerToken() * tokens_per_step / t / 1e9;

  double total = 0, matmul = 0;
  for (const auto& [name, ot] : profile) {
    total += ot.seconds;
    if (name == "Matmul") matmul += ot.seconds;
  }
  std::printf("training step (forward+backward+AdamW, median of %d): %.3f s | %.0f tokens/s\n",
              o.iters, t, tokens_per_step / t);
  std::printf("achieved: %.1f GFLOP/s (matrix-product FLOPs %.1f MFLOP/token)\n", model_gflops,
              model.MatmulFlopsPerToken() / 1e6);
  if (o.cuda) {
    // MFU as in shared/docs/gpu-machine.md: 6 N flops per token, N without the input embedding.
    const double n = model.params().NumElements() - static_cast<double>(d.vocab) * d.width;
    std::printf("MFU (6N flops/token, N = %.1fM without the embedding, over 989 TFLOP/s): %.1f%%\n",
                n / 1e6, 100 * 6 * n * tokens_per_step / t / 989e12);
#ifdef GDN_WITH_CUDA
    std::printf("device memory held after the steps: %.2f GB (in use %.2f GB)\n",
                (cuda::DeviceAllocatedBytes() + cuda::DeviceCachedBytes()) / 1e9,
                cuda::DeviceAllocatedBytes() / 1e9);
#endif
  } else {
    const double sgemm = SgemmGflops(2048);
    std::printf("OpenBLAS sgemm 2048^3: %.1f GFLOP/s\n", sgemm);
    std::printf("model / sgemm: %.2f (goal >= 0.50)\n", model_gflops / sgemm);
  }
  std::printf("time per step by op (all %d timed steps):\n", o.iters);
  std::vector<std::pair<std::string, ops::OpTime>> rows(profile.begin(), profile.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  for (const auto& [name, ot] : rows)
    std::printf("  %-24s %8.1f ms %5.1f%%  (%lld calls)\n", name.c_str(),
                1e3 * ot.seconds / o.iters, 100 * ot.seconds / total,
                static_cast<long long>(ot.calls / o.iters));
  std::printf("  matrix products %.1f%% of op time, everything else %.1f%%\n", 100 * matmul / total,
              100 * (total - matmul) / total);
  return absl::OkStatus();
}

}  // namespace gdn
