#include "launcher/bench.h"

#include <algorithm>
#include <optional>
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
#include "launcher/trainer.h"
#include "model/gradient_reducer.h"
#ifdef GDN_WITH_NCCL
#include "runtime/nccl_communicator.h"
#endif
#include "runtime/mpi_communicator.h"
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
  spec.mutable_parallel()->set_tensor_parallel(o.tensor_parallel);
  spec.mutable_parallel()->set_zero_stage(o.zero ? 1 : 0);
  spec.mutable_parallel()->set_bucket_mb(o.bucket_mb);
  spec.mutable_data()->set_batch_size(o.batch);
  spec.mutable_data()->set_seq_len(o.seq_len);

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
  // The trainer's grid and layout checks; on GPUs NCCL carries the CUDA tensors.
  auto job_grid = ProcessGrid::Create(o.tensor_parallel);
  if (!job_grid.ok()) return job_grid.status();
  // ValidateLayout sees the global batch: every data-parallel rank runs `batch` sequences.
  spec.mutable_data()->set_batch_size(o.batch * job_grid->dp_size);
  if (auto s = ValidateLayout(spec, *job_grid); !s.ok()) return s;
  std::optional<ProcessGrid> device_grid;
#ifdef GDN_WITH_NCCL
  if (o.cuda && job_grid->world_size > 1) {
    auto g = WithNcclForCudaTensors(*job_grid);
    if (!g.ok()) return g.status();
    device_grid = std::move(*g);
  }
#else
  if (o.cuda && job_grid->world_size > 1)
    return absl::InvalidArgumentError("--device cuda with several ranks needs NCCL, and this gdn was built without it");
#endif
  const ProcessGrid& grid = device_grid.has_value() ? *device_grid : *job_grid;
  const bool talk = grid.world_rank == 0;

  ops::SetMatmulPrecision(o.bf16 ? ops::MatmulPrecision::kBfloat16 : ops::MatmulPrecision::kFloat32);
  const TensorParallel tp{grid.tp_rank, grid.tp_size};
  LanguageModel model(spec, DType::kF32, tp, grid.tp.get(), device);
  model.Initialize(0);
  model.set_recompute(o.recompute);
  GradientReducer reducer(model.params(), tp, grid.tp.get(), grid.dp.get(), ReducerOptions(spec));
  Optimizer optimizer(spec.optimizer(), model.params(), &reducer);
  const ModelDims& d = model.dims();
  // Each data-parallel rank its own tokens; the ranks of a tensor-parallel group the same.
  Tensor tokens = Tensor::Empty({o.batch, o.seq_len + 1}, DType::kI32);
  Rng rng(1 + grid.dp_rank);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = rng.UniformInt(d.vocab);

  std::string device_name = "CPU";
#ifdef GDN_WITH_CUDA
  if (o.cuda) device_name = cuda::DescribeCurrentDevice();
#endif
  if (talk)
    std::printf("gdn bench: width %d, depth %d, heads %lld x (dk %lld, dv %lld), MLP %lld, vocab %lld, "
                "%.2fM parameters, batch %d x seq %d per data-parallel rank, %s, %s recurrence, "
                "%d threads%s\n"
                "ranks: %d (data parallel %d x tensor parallel %d%s) on %s\n",
                o.width, o.depth, static_cast<long long>(d.heads), static_cast<long long>(d.dk),
                static_cast<long long>(d.dv), static_cast<long long>(d.mlp_hidden),
                static_cast<long long>(d.vocab), model.params().NumElements() / 1e6, o.batch,
                o.seq_len, o.bf16 ? "bf16 matrix products" : "float32",
                o.sequential ? "sequential" : "chunked", omp_get_max_threads(),
                o.recompute ? ", activations recomputed in the backward" : "", grid.world_size,
                grid.dp_size, grid.tp_size, o.zero ? ", ZeRO-1" : "", device_name.c_str());

  auto sync = [&] {
#ifdef GDN_WITH_CUDA
    if (o.cuda) cuda::Synchronize();
#endif
  };
  auto step = [&](int64_t i) {
    TrainStep(model, reducer, optimizer, tokens, o.batch, o.batch * grid.dp_size, 1.0, 1e-4, i + 1,
              *grid.dp);
    sync();
  };
  step(0);  // warm-up: allocator, cuBLAS handles, NCCL connections
  const bool measure_comm = o.cuda && grid.dp_size > 1;
  grid.dp->SetAsyncTiming(measure_comm);
  std::vector<double> times, comm_s;
  for (int i = 0; i < o.iters; ++i) {
    grid.world->Barrier();
    const auto t0 = std::chrono::steady_clock::now();
    step(i + 1);
    times.push_back(Seconds(t0));
    if (measure_comm) {
      const std::vector<double> t = grid.dp->TakeAsyncTimes();
      comm_s.insert(comm_s.end(), t.begin(), t.end());
    }
  }
  grid.dp->SetAsyncTiming(false);
  // The slowest rank sets the pace: each step's time is the maximum over ranks.
  Tensor slowest = Tensor::Empty({static_cast<int64_t>(times.size())}, DType::kF64);
  for (size_t i = 0; i < times.size(); ++i) slowest.set(i, times[i]);
  grid.world->AllReduceMax(slowest);
  for (size_t i = 0; i < times.size(); ++i) times[i] = slowest.at(i);
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  const double tokens_per_step = static_cast<double>(o.batch) * o.seq_len * grid.dp_size;
  const double model_gflops = model.MatmulFlopsPerToken() * tokens_per_step / t / 1e9;

  // The per-op breakdown: one more step, each op timed on its own.
  ops::EnableProfiling(true);
  step(o.iters + 1);
  ops::EnableProfiling(false);
  const auto profile = ops::TakeProfile();
  if (!talk) return absl::OkStatus();

  std::printf("training step (forward+backward+AdamW, median of %d): %.3f s | %.0f tokens/s | "
              "%.0f tokens/s per rank\n",
              o.iters, t, tokens_per_step / t, tokens_per_step / t / grid.world_size);
  std::printf("achieved: %.1f GFLOP/s (matrix-product FLOPs %.1f MFLOP/token)\n", model_gflops,
              model.MatmulFlopsPerToken() / 1e6);
  if (o.cuda) {
    // MFU as in shared/docs/gpu-machine.md: 6 N flops per token, N without the input embedding.
    const double n = model.params().NumElements() - static_cast<double>(d.vocab) * d.width;
    std::printf("MFU (6N flops/token, N = %.1fM without the embedding, over 989 TFLOP/s per GPU): %.1f%%\n",
                n / 1e6, 100 * 6 * n * tokens_per_step / t / 989e12 / grid.world_size);
#ifdef GDN_WITH_CUDA
    std::printf("device memory held after the steps (rank 0): %.2f GB (in use %.2f GB)\n",
                (cuda::DeviceAllocatedBytes() + cuda::DeviceCachedBytes()) / 1e9,
                cuda::DeviceAllocatedBytes() / 1e9);
#endif
  }
  if (!o.cuda) {
    const double sgemm = SgemmGflops(2048);
    std::printf("OpenBLAS sgemm 2048^3: %.1f GFLOP/s\n", sgemm);
    std::printf("model / sgemm: %.2f (goal >= 0.50)\n", model_gflops / sgemm);
  }
  if (measure_comm) {
    // Bus bandwidth as nccl-tests count it: all-reduce moves 2 (n-1)/n of the buffer per rank,
    // reduce-scatter and all-gather (n-1)/n. The time is the collective's own on its stream,
    // while the backward's kernels share the GPU.
    const std::vector<int64_t> buckets = reducer.BucketBytes();
    const double n = grid.dp_size;
    const size_t per_step = comm_s.size() / o.iters;
    const bool zero = reducer.sharded();
    double bytes = 0, seconds = 0;
    for (int64_t b : buckets) bytes += b;
    // All-reduce, or reduce-scatter plus all-gather: the same bytes on the wire.
    const double bus_bytes = 2 * bytes * (n - 1) / n;
    for (double s : comm_s) seconds += s;
    seconds /= o.iters;
    std::printf("data-parallel traffic inside the step (rank 0): %zu buckets of %.1f MB in all, "
                "%zu collectives per step (%s), %.2f ms per step on the communication stream, "
                "bus bandwidth %.1f GB/s\n",
                buckets.size(), bytes / 1e6, per_step,
                zero ? "reduce-scatter, then all-gather of the values" : "all-reduce", 1e3 * seconds,
                bus_bytes / seconds / 1e9);
    std::printf("  bucket sizes (MB):");
    for (int64_t b : buckets) std::printf(" %.1f", b / 1e6);
    std::printf("\n");
  }
  double total = 0, matmul = 0;
  for (const auto& [name, ot] : profile) {
    total += ot.seconds;
    if (name == "Matmul") matmul += ot.seconds;
  }
  std::printf("time per step by op (one step, each op waited for; rank 0):\n");
  std::vector<std::pair<std::string, ops::OpTime>> rows(profile.begin(), profile.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  for (const auto& [name, ot] : rows)
    std::printf("  %-24s %8.1f ms %5.1f%%  (%lld calls)\n", name.c_str(), 1e3 * ot.seconds,
                100 * ot.seconds / total, static_cast<long long>(ot.calls));
  std::printf("  matrix products %.1f%% of op time, everything else %.1f%%\n", 100 * matmul / total,
              100 * (total - matmul) / total);
  return absl::OkStatus();
}

}  // namespace gdn
