// The NCCL communicator (runtime/nccl_communicator.h) under `mpirun -np 2`: every collective on CUDA
// tensors against the values the MPI communicator gives for the same data on the CPU. Needs one GPU
// per rank; with fewer, every rank skips with the reason (as on the CI machine).
#include <mpi.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "runtime/cuda_device.h"
#include "runtime/mpi_communicator.h"
#include "tests/mpi_test_main.h"
#include "runtime/nccl_communicator.h"

namespace gdn {
namespace {

ProcessGrid& Grid() {
  static ProcessGrid* grid = [] {
    auto g = ProcessGrid::Create(1);
    CHECK(g.ok()) << g.status();
    return new ProcessGrid(std::move(*g));
  }();
  return *grid;
}

// Why this job cannot test NCCL (the same answer on every rank), or empty.
std::string SkipReason() {
  std::string why;
  if (!cuda::GpuAvailable(&why)) return why;
  int gpus = cuda::VisibleDeviceCount();
  if (gpus < Grid().world_size)
    return std::to_string(Grid().world_size) + " ranks need as many GPUs, " +
           std::to_string(gpus) + " visible";
  return "";
}

Communicator& Nccl() {
  static Communicator* comm = [] {
    auto c = MakeNcclCommunicator(*Grid().world);
    CHECK(c.ok()) << c.status();
    return c->release();
  }();
  return *comm;
}

// Rank-dependent float32 values, the same on every run.
Tensor Values(int64_t n, int salt) {
  Tensor t = Tensor::Empty({n}, DType::kF32);
  for (int64_t i = 0; i < n; ++i) t.set(i, (i % 7) * 0.25 + Grid().world_rank * 10 + salt);
  return t;
}

void ExpectEqual(const Tensor& gpu, const Tensor& cpu) {
  const Tensor g = gpu.To(Device::kCPU);
  ASSERT_EQ(g.numel(), cpu.numel());
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.at(i), cpu.at(i)) << i;
}

TEST(NcclCommunicator, CollectivesEqualMpi) {
  const std::string why = SkipReason();
  if (!why.empty()) GTEST_SKIP() << why;
  Communicator& nccl = Nccl();
  Communicator& mpi = *Grid().world;
  EXPECT_EQ(nccl.rank(), mpi.rank());
  EXPECT_EQ(nccl.size(), mpi.size());
  const int n = 1000, p = mpi.size();
  {
    const Tensor c = Values(n, 1), d = c.To(Device::kCUDA);
    mpi.AllReduceSum(c);
    nccl.AllReduceSum(d);
    ExpectEqual(d, c);
  }
  {
    const Tensor c = Values(n, 2), d = c.To(Device::kCUDA);
    mpi.AllReduceMax(c);
    nccl.AllReduceMax(d);
    ExpectEqual(d, c);
  }
  {
    const Tensor in = Values(n, 3), out = Tensor::Empty({p * n}, DType::kF32);
    const Tensor dout = Tensor::Empty({p * n}, DType::kF32, Device::kCUDA);
    mpi.AllGather(in, out);
    nccl.AllGather(in.To(Device::kCUDA), dout);
    ExpectEqual(dout, out);
  }
  {
    const Tensor in = Values(p * n, 4), out = Tensor::Empty({n}, DType::kF32);
    const Tensor dout = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
    mpi.ReduceScatterSum(in, out);
    nccl.ReduceScatterSum(in.To(Device::kCUDA), dout);
    ExpectEqual(dout, out);
  }
  {
    const Tensor c = Values(n, 5), d = c.To(Device::kCUDA);
    mpi.Broadcast(c, p - 1);
    nccl.Broadcast(d, p - 1);
    ExpectEqual(d, c);
  }
  nccl.Barrier();
}

// The started (non-blocking) collectives, several in flight on their own stream, give the blocking
// ones' values once waited for; with timing on, each reports a positive duration.
TEST(NcclCommunicator, StartedCollectivesEqualMpi) {
  const std::string why = SkipReason();
  if (!why.empty()) GTEST_SKIP() << why;
  Communicator& nccl = Nccl();
  Communicator& mpi = *Grid().world;
  const int n = 1 << 20, p = mpi.size();
  const Tensor c = Values(n, 6), d = c.To(Device::kCUDA);
  const Tensor rs_in = Values(p * n, 7), rs_out = Tensor::Empty({n}, DType::kF32);
  const Tensor drs_out = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
  const Tensor ag_in = Values(n, 8), ag_out = Tensor::Empty({p * n}, DType::kF32);
  const Tensor dag_out = Tensor::Empty({p * n}, DType::kF32, Device::kCUDA);
  nccl.SetAsyncTiming(true);
  nccl.StartAllReduceSum(d);
  // A temporary input, freed here while the collective may still read it: the communicator holds
  // it until WaitAsync, or the next allocation (dag_in) could take its memory.
  nccl.StartReduceScatterSum(rs_in.To(Device::kCUDA), drs_out);
  const Tensor dag_in = ag_in.To(Device::kCUDA);
  nccl.StartAllGather(dag_in, dag_out);
  nccl.WaitAsync();
  mpi.AllReduceSum(c);
  mpi.ReduceScatterSum(rs_in, rs_out);
  mpi.AllGather(ag_in, ag_out);
  ExpectEqual(d, c);
  ExpectEqual(drs_out, rs_out);
  ExpectEqual(dag_out, ag_out);
  const std::vector<double> times = nccl.TakeAsyncTimes();
  ASSERT_EQ(times.size(), 3u);
  for (double t : times) EXPECT_GT(t, 0);
  nccl.SetAsyncTiming(false);
  EXPECT_TRUE(nccl.TakeAsyncTimes().empty());

  // In place (ZeRO-1's buckets): the result in this rank's rows of the input, the input in this
  // rank's rows of the output.
  const int r = mpi.rank();
  const Tensor drs = rs_in.To(Device::kCUDA), dag = Tensor::Zeros({p * n}, DType::kF32, Device::kCUDA);
  dag.Rows(r * n, (r + 1) * n).CopyFrom(ag_in);
  nccl.StartReduceScatterSum(drs, drs.Rows(r * n, (r + 1) * n));
  nccl.StartAllGather(dag.Rows(r * n, (r + 1) * n), dag);
  nccl.WaitAsync();
  ExpectEqual(drs.Rows(r * n, (r + 1) * n), rs_out);
  ExpectEqual(dag, ag_out);
}

}  // namespace
}  // namespace gdn

int main(int argc, char** argv) {
  return gdn::RunTestsOnEveryRank(argc, argv, "nccl_communicator_tests must run under mpirun -np 2",
                                  [] { return gdn::Grid().world_rank; });
}
