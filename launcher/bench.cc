#include "launcher/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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

// Waits until this rank's collective has finished: NCCL only queues it on the stream.
void WaitForDevice(bool cuda) {
#ifdef GDN_WITH_CUDA
  if (cuda) cuda::Synchronize();
#else
  (void)cuda;
#endif
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
#ifdef GDN_WITH_CUDA
  std::string why;
  if (o.cuda && !cuda::GpuAvailable(&why))
    return absl::InvalidArgumentError(absl::StrCat("--device cuda: no GPU is usable: ", why));
#else
  if (o.cuda) return absl::InvalidArgumentError("--device cuda: this gdn was built without CUDA");
#endif
  auto job_grid = ProcessGrid::Create(1);
  if (!job_grid.ok()) return job_grid.status();
  const int n = job_grid->world_size;
  const bool talk = job_grid->world_rank == 0;
  std::string device_name = "CPU, MPI";
  // CUDA tensors through NCCL, CPU ones (the check's counts, the times) through MPI, as training
  // does (WithNcclForCudaTensors also refuses two ranks on one GPU).
  std::optional<ProcessGrid> device_grid;
  if (o.cuda) {
#ifndef GDN_WITH_NCCL
    if (n > 1)
      return absl::InvalidArgumentError(absl::StrFormat(
          "--device cuda with %d ranks needs NCCL, and this gdn was built without it", n));
#else
    if (n > 1) {
      auto g = WithNcclForCudaTensors(*job_grid);
      if (!g.ok()) return g.status();
      device_grid = std::move(*g);
    }
#endif
#ifdef GDN_WITH_CUDA
    device_name = cuda::DescribeCurrentDevice() + (n > 1 ? ", NCCL" : "");
#endif
  }
  Communicator& comm = *(device_grid.has_value() ? device_grid->world : job_grid->world);
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
