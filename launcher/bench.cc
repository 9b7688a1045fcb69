#include "launcher/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include <omp.h>

#include "kernels/ops.h"
#include "model/config.h"
#include "model/lm.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#ifdef GDN_WITH_CUDA
#include "runtime/cuda_device.h"
#endif
#ifdef GDN_WITH_NCCL
#include "runtime/nccl_communicator.h"
#endif
#include "model/optimizer.h"
#include "launcher/trainer.h"
#include "model/gradient_reducer.h"
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

// A benchmark's ranks: the job's MPI grid and, for CUDA tensors on several ranks, the same groups
// over NCCL, as the trainer has them. Errors (no GPU, no NCCL, two ranks on one GPU) come before
// anything is computed.
struct BenchRanks {
  ProcessGrid job;
  std::optional<ProcessGrid> nccl;
  std::string device_name = "CPU";  // this rank's device, for the headers
  const ProcessGrid& grid() const { return nccl.has_value() ? *nccl : job; }
};

absl::StatusOr<std::unique_ptr<BenchRanks>> StartBenchRanks(bool cuda, int tensor_parallel) {
#ifdef GDN_WITH_CUDA
  std::string why;
  if (cuda && !cuda::GpuAvailable(&why))
    return absl::InvalidArgumentError(absl::StrCat("--device cuda: no GPU is usable: ", why));
#else
  if (cuda) return absl::InvalidArgumentError("--device cuda: this gdn was built without CUDA");
#endif
  auto job = ProcessGrid::Create(tensor_parallel);
  if (!job.ok()) return job.status();
  auto ranks = std::make_unique<BenchRanks>();
  ranks->job = std::move(*job);
  if (!cuda) return ranks;
  if (ranks->job.world_size > 1) {
#ifdef GDN_WITH_NCCL
    auto g = WithNcclForCudaTensors(ranks->job);
    if (!g.ok()) return g.status();
    ranks->nccl = std::move(*g);
#else
    return absl::InvalidArgumentError(absl::StrFormat(
        "--device cuda with %d ranks needs NCCL, and this gdn was built without it",
        ranks->job.world_size));
#endif
  }
#ifdef GDN_WITH_CUDA
  ranks->device_name = cuda::DescribeCurrentDevice();
#endif
  return ranks;
}

// Waits until this rank's GPU work has finished (a step's kernels, a collective NCCL only queued
// on the stream).
void WaitForDevice(bool cuda) {
#ifdef GDN_WITH_CUDA
  if (cuda) cuda::Synchronize();
#else
  (void)cuda;
#endif
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
  spec.mutable_data()->set_seq_len(o.seq_len);

  if (auto s = ValidateModelSpec(spec); !s.ok()) return s;
  const Device device = o.cuda ? Device::kCUDA : Device::kCPU;
  if (o.bf16 && !o.cuda) return absl::InvalidArgumentError("--precision bf16 needs --device cuda");
  auto ranks = StartBenchRanks(o.cuda, o.tensor_parallel);
  if (!ranks.ok()) return ranks.status();
  const ProcessGrid& grid = (*ranks)->grid();
  // The trainer's layout checks, on the global batch: every data-parallel rank runs `batch`.
  spec.mutable_data()->set_batch_size(o.batch * grid.dp_size);
  if (auto s = ValidateLayout(spec, grid); !s.ok()) return s;
  if (auto s = CheckMemoryNeed(spec, grid, device); !s.ok()) return s;
  const bool talk = grid.world_rank == 0;

  ops::SetMatmulPrecision(o.bf16 ? ops::MatmulPrecision::kBfloat16 : ops::MatmulPrecision::kFloat32);
  const TensorParallel tp{grid.tp_rank, grid.tp_size};
  LanguageModel model(spec, DType::kF32, tp, grid.tp.get(), device);
  model.Initialize(0);
  model.set_recompute(o.recompute);
  model.set_save_recurrence(o.save_recurrence);
  GradientReducer reducer(model.params(), tp, grid.tp.get(), grid.dp.get(), ReducerOptions(spec));
  Optimizer optimizer(spec.optimizer(), model.params(), &reducer);
  const ModelDims& d = model.dims();
  // Each data-parallel rank its own tokens; the ranks of a tensor-parallel group the same.
  Tensor tokens = Tensor::Empty({o.batch, o.seq_len + 1}, DType::kI32);
  Rng rng(1 + grid.dp_rank);
  for (int64_t i = 0; i < tokens.numel(); ++i) tokens.data<int32_t>()[i] = rng.UniformInt(d.vocab);

  const std::string& device_name = (*ranks)->device_name;
  if (talk)
    std::printf("gdn bench: width %d, depth %d, heads %lld x (dk %lld, dv %lld), MLP %lld, vocab %lld, "
                "%.2fM parameters, batch %d x seq %d per data-parallel rank, %s, %s recurrence, "
                "%d threads%s%s\n"
                "ranks: %d (data parallel %d x tensor parallel %d%s) on %s\n",
                o.width, o.depth, static_cast<long long>(d.heads), static_cast<long long>(d.dk),
                static_cast<long long>(d.dv), static_cast<long long>(d.mlp_hidden),
                static_cast<long long>(d.vocab), model.params().NumElements() / 1e6, o.batch,
                o.seq_len, o.bf16 ? "bf16 matrix products" : "float32",
                o.sequential ? "sequential" : "chunked", omp_get_max_threads(),
                o.recompute ? ", activations recomputed in the backward" : "",
                o.save_recurrence && o.cuda ? ", recurrence saved for the backward" : "",
                grid.world_size,
                grid.dp_size, grid.tp_size, o.zero ? ", ZeRO-1" : "", device_name.c_str());

  auto step = [&](int64_t i) {
    TrainStep(model, reducer, optimizer, tokens, o.batch, o.batch * grid.dp_size, 1.0, 1e-4, i + 1,
              *grid.dp);
    WaitForDevice(o.cuda);
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
    std::printf("device memory held after the steps (rank 0): %.2f GB (in use %.2f GB, at most "
                "%.2f GB in use at once); the GPU's memory in use by all (nvidia-smi's figure, "
                "with CUDA's pools): %.2f GB\n",
                (cuda::DeviceAllocatedBytes() + cuda::DeviceCachedBytes()) / 1e9,
                cuda::DeviceAllocatedBytes() / 1e9, cuda::DevicePeakAllocatedBytes() / 1e9,
                cuda::DeviceBytesInUseByAll() / 1e9);
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

namespace {

const char* CollectiveName(Collective op) {
  switch (op) {
    case Collective::kAllReduce: return "allreduce";
    case Collective::kReduceScatter: return "reducescatter";
    case Collective::kAllGather: return "allgather";
  }
  return "?";
}

// The buffers of one collective: `in` and `out` are the same tensor for the in-place all-reduce.
// The full buffer (what sizes and bandwidths count, as nccl-tests does) is the all-reduce's
// tensor, the reduce-scatter's input and the all-gather's output.
struct CollectiveBuffers {
  Tensor in, out;
  int64_t full_elements = 0;
};

CollectiveBuffers MakeBuffers(Collective op, double mib, int n, Device device) {
  // Reduce-scatter and all-gather need a multiple of the rank count: rounded down (at least n).
  int64_t elements = std::max<int64_t>(1, std::llround(mib * (1 << 20) / sizeof(float)));
  if (op != Collective::kAllReduce) elements = std::max<int64_t>(n, elements / n * n);
  CollectiveBuffers b;
  b.full_elements = elements;
  switch (op) {
    case Collective::kAllReduce:
      b.in = b.out = Tensor::Empty({elements}, DType::kF32, device);
      break;
    case Collective::kReduceScatter:
      b.in = Tensor::Empty({elements}, DType::kF32, device);
      b.out = Tensor::Empty({elements / n}, DType::kF32, device);
      break;
    case Collective::kAllGather:
      b.in = Tensor::Empty({elements / n}, DType::kF32, device);
      b.out = Tensor::Empty({elements}, DType::kF32, device);
      break;
  }
  return b;
}

void RunCollective(Communicator& comm, Collective op, const CollectiveBuffers& b) {
  switch (op) {
    case Collective::kAllReduce: comm.AllReduceSum(b.in); break;
    case Collective::kReduceScatter: comm.ReduceScatterSum(b.in, b.out); break;
    case Collective::kAllGather: comm.AllGather(b.in, b.out); break;
  }
}

// One collective with rank r contributing r + 1 everywhere, every element of the result compared
// with what it must be (small integers: exact in float32). Error on every rank when any rank's
// result is wrong; rank 0's message names the ranks and, where it is one, its first wrong element.
absl::Status CheckCollective(Communicator& comm, Collective op, const CollectiveBuffers& b,
                             bool cuda) {
  const int n = comm.size(), r = comm.rank();
  ops::Fill(b.in, r + 1);
  RunCollective(comm, op, b);
  WaitForDevice(cuda);
  Tensor result = b.out.To(Device::kCPU);
  // Test hook: GDN_TEST_BENCH_CORRUPT=RANK spoils one element of that rank's result, so the test
  // can show that a broken collective is caught.
  if (const char* v = std::getenv("GDN_TEST_BENCH_CORRUPT"); v != nullptr && std::atoi(v) == r)
    result.data<float>()[result.numel() / 2] += 1;
  const double sum = n * (n + 1) / 2.0;
  const int64_t block = b.in.numel();  // the all-gather's rows per rank
  const float* x = result.data<float>();
  int32_t wrong = 0;
  std::string first;
  for (int64_t i = 0; i < result.numel(); ++i) {
    const double want = op == Collective::kAllGather ? static_cast<double>(i / block + 1) : sum;
    if (x[i] != want) {
      if (wrong++ == 0)
        first = absl::StrFormat("; rank %d: element %lld is %g, expected %g", r,
                                static_cast<long long>(i), x[i], want);
    }
  }
  Tensor mine = Tensor::Empty({1}, DType::kI32), all = Tensor::Empty({n}, DType::kI32);
  mine.data<int32_t>()[0] = wrong;
  comm.AllGather(mine, all);  // CPU tensors: through MPI even when the data went through NCCL
  std::vector<std::string> bad;
  for (int k = 0; k < n; ++k)
    if (all.data<int32_t>()[k] > 0)
      bad.push_back(absl::StrFormat("rank %d: %d of %lld elements", k, all.data<int32_t>()[k],
                                    static_cast<long long>(result.numel())));
  if (bad.empty()) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat(
      "%s of %lld bytes gave a wrong result (%s)%s: the collective is broken, so its bandwidth "
      "means nothing",
      CollectiveName(op), static_cast<long long>(b.full_elements * sizeof(float)),
      absl::StrJoin(bad, ", "), first));
}

}  // namespace

absl::Status ParseCollectiveSizes(const std::string& text, std::vector<double>* sizes_mib) {
  sizes_mib->clear();
  for (absl::string_view part : absl::StrSplit(absl::string_view(text), ',')) {
    double mib = 0;
    if (!absl::SimpleAtod(part, &mib) || !std::isfinite(mib) || mib <= 0 || mib > kMaxCollectiveMib)
      return absl::InvalidArgumentError(absl::StrFormat(
          "--sizes: '%s' is not a size in MiB > 0 and <= %g (e.g. --sizes 1,4,16)",
          std::string(part), kMaxCollectiveMib));
    sizes_mib->push_back(mib);
  }
  return absl::OkStatus();
}

absl::Status RunCollectiveBench(const CollectiveBenchOptions& o) {
  if (o.iters < 1 || o.warmup < 0 || o.sizes_mib.empty())
    return absl::InvalidArgumentError("gdn bench allreduce: iters >= 1, warmup >= 0 and a size");
  auto ranks = StartBenchRanks(o.cuda, 1);
  if (!ranks.ok()) return ranks.status();
  const int n = (*ranks)->job.world_size;
  const bool talk = (*ranks)->job.world_rank == 0;
  // CUDA tensors through NCCL, CPU ones (the check's counts, the times) through MPI.
  Communicator& comm = *(*ranks)->grid().world;
  const std::string device_name = (*ranks)->device_name + (!o.cuda ? ", MPI" : n > 1 ? ", NCCL" : "");
  const Device device = o.cuda ? Device::kCUDA : Device::kCPU;
  const char* name = CollectiveName(o.op);
  if (talk)
    std::printf("gdn bench allreduce: op %s, %d ranks, float32, rank 0 on %s; %d timed "
                "iterations after %d warm-up, each timed on the slowest rank\n",
                name, n, device_name.c_str(), o.iters, o.warmup);
  if (n == 1) {
    // MPI and NCCL are never called for a group of one: there is nothing to time.
    if (talk)
      std::printf("1 rank: every collective is the identity and moves no data, so there is no "
                  "bandwidth to measure; start 2 or more ranks (mpirun -np N, srun -n N)\n");
    return absl::OkStatus();
  }
  if (talk) {
    std::printf("%14s %12s %12s %13s %13s\n", "bytes", "median (us)", "min (us)", "algbw (GB/s)",
                "busbw (GB/s)");
    std::fflush(stdout);
  }
  // nccl-tests' bus bandwidth: what each rank's link carries, comparable across rank counts.
  const double bus_factor =
      o.op == Collective::kAllReduce ? 2.0 * (n - 1) / n : static_cast<double>(n - 1) / n;
  for (double mib : o.sizes_mib) {
    const CollectiveBuffers b = MakeBuffers(o.op, mib, n, device);
    if (auto s = CheckCollective(comm, o.op, b, o.cuda); !s.ok()) return s;
    b.in.SetZero();
    Tensor times = Tensor::Empty({o.iters}, DType::kF64);
    for (int i = 0; i < o.warmup + o.iters; ++i) {
      // All ranks start together (each rank's device idle first), so the time is the collective's.
      WaitForDevice(o.cuda);
      comm.Barrier();
      const auto t0 = std::chrono::steady_clock::now();
      RunCollective(comm, o.op, b);
      WaitForDevice(o.cuda);
      if (i >= o.warmup) times.data<double>()[i - o.warmup] = Seconds(t0);
    }
    comm.AllReduceMax(times);  // an iteration lasts until its slowest rank is done
    std::vector<double> t(times.data<double>(), times.data<double>() + o.iters);
    std::sort(t.begin(), t.end());
    const double median = t.size() % 2 ? t[t.size() / 2] : (t[t.size() / 2 - 1] + t[t.size() / 2]) / 2;
    const double bytes = static_cast<double>(b.full_elements) * sizeof(float);
    const double algbw = bytes / median / 1e9;
    if (talk) {
      std::printf("%14.0f %12.1f %12.1f %13.3f %13.3f\n", bytes, median * 1e6, t[0] * 1e6, algbw,
                  algbw * bus_factor);
      std::fflush(stdout);
    }
  }
  if (talk)
    std::printf("algbw = bytes / median time, busbw = algbw * %s (nccl-tests' convention; GB = 1e9 "
                "bytes); bytes is the full buffer\n",
                o.op == Collective::kAllReduce ? "2(n-1)/n" : "(n-1)/n");
  return absl::OkStatus();
}

}  // namespace gdn
