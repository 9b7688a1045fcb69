// The MPI communicators and the process grid, run under `mpirun -np 4` (ctest does): every rank runs
// every test, and a failure on any rank fails the job. The grid is DP 2 x TP 2.
#include <mpi.h>

#include <cstdlib>
#include <limits>

#include "gtest/gtest.h"
#ifdef GDN_WITH_CUDA
#include "runtime/cuda_device.h"
#endif
#include "runtime/mpi_communicator.h"
#include "tests/mpi_test_main.h"

namespace gdn {
namespace {

ProcessGrid& Grid() {
  static ProcessGrid* grid = [] {
    auto g = ProcessGrid::Create(2);
    CHECK(g.ok()) << g.status();
    return new ProcessGrid(std::move(*g));
  }();
  return *grid;
}

Tensor Values(std::initializer_list<double> v) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kF64);
  int64_t i = 0;
  for (double x : v) t.set(i++, x);
  return t;
}

TEST(ProcessGrid, TensorParallelIsFastest) {
  const ProcessGrid& g = Grid();
  ASSERT_EQ(g.world_size, 4) << "run this test with mpirun -np 4";
  EXPECT_EQ(g.tp_size, 2);
  EXPECT_EQ(g.dp_size, 2);
  EXPECT_EQ(g.tp_rank, g.world_rank % 2);
  EXPECT_EQ(g.dp_rank, g.world_rank / 2);
  EXPECT_EQ(g.tp->rank(), g.tp_rank);
  EXPECT_EQ(g.dp->rank(), g.dp_rank);
  EXPECT_EQ(g.world->rank(), g.world_rank);
  // Who is in my groups: gather world ranks over each group.
  Tensor me = Values({static_cast<double>(g.world_rank)});
  Tensor tp_members = Tensor::Empty({2}, DType::kF64), dp_members = Tensor::Empty({2}, DType::kF64);
  g.tp->AllGather(me, tp_members);
  g.dp->AllGather(me, dp_members);
  EXPECT_EQ(tp_members.at(0), 2 * g.dp_rank);
  EXPECT_EQ(tp_members.at(1), 2 * g.dp_rank + 1);
  EXPECT_EQ(dp_members.at(0), g.tp_rank);
  EXPECT_EQ(dp_members.at(1), g.tp_rank + 2);
}

TEST(Communicator, AllReduceSumAndMax) {
  const ProcessGrid& g = Grid();
  const double r = g.world_rank;
  Tensor s = Values({r, 10 * r});
  g.world->AllReduceSum(s);
  EXPECT_EQ(s.at(0), 0 + 1 + 2 + 3);
  EXPECT_EQ(s.at(1), 60);
  Tensor t = Values({r});
  g.tp->AllReduceSum(t);  // {0,1} or {2,3}
  EXPECT_EQ(t.at(0), 4 * g.dp_rank + 1);
  Tensor f = Tensor::Empty({2}, DType::kF32);
  f.set(0, -r);
  f.set(1, r);
  g.dp->AllReduceMax(f);  // {0,2} or {1,3}
  EXPECT_EQ(f.at(0), -g.tp_rank);
  EXPECT_EQ(f.at(1), g.tp_rank + 2);
}

TEST(Communicator, ReduceScatterSumGivesEachRankItsRows) {
  const ProcessGrid& g = Grid();
  // in [4, 2] on every rank: row i = (rank + i, 1); the sum over ranks of row i = (6 + 4i, 4).
  Tensor in = Tensor::Empty({4, 2}, DType::kF64);
  for (int i = 0; i < 4; ++i) {
    in.set(2 * i, g.world_rank + i);
    in.set(2 * i + 1, 1);
  }
  Tensor out = Tensor::Empty({1, 2}, DType::kF64);
  g.world->ReduceScatterSum(in, out);
  EXPECT_EQ(out.at(0), 6 + 4 * g.world_rank);
  EXPECT_EQ(out.at(1), 4);
}

TEST(Communicator, BroadcastAndBarrier) {
  const ProcessGrid& g = Grid();
  Tensor t = Tensor::Empty({3}, DType::kI32);
  for (int i = 0; i < 3; ++i) t.set(i, g.world_rank == 1 ? 7 + i : -1);
  g.world->Broadcast(t, 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.at(i), 7 + i);
  g.world->Barrier();
}

// The non-blocking forms, several in flight at once, give the blocking forms' values after
// WaitAsync (Open MPI's non-blocking collectives on the data-parallel group).
TEST(Communicator, StartedCollectivesEqualBlockingOnes) {
  const ProcessGrid& g = Grid();
  const int64_t n = 1000;
  auto filled = [&](int64_t size, int salt) {
    Tensor t = Tensor::Empty({size}, DType::kF32);
    for (int64_t i = 0; i < size; ++i) t.set(i, (i % 13) * 0.5 + 3 * g.world_rank + salt);
    return t;
  };
  const Tensor a = filled(n, 1), a_ref = a.Clone();
  const Tensor rs_in = filled(2 * n, 2), rs_out = Tensor::Empty({n}, DType::kF32);
  const Tensor rs_ref = Tensor::Empty({n}, DType::kF32);
  const Tensor ag_in = filled(n, 3), ag_out = Tensor::Empty({2 * n}, DType::kF32);
  const Tensor ag_ref = Tensor::Empty({2 * n}, DType::kF32);
  g.dp->StartAllReduceSum(a);
  g.dp->StartReduceScatterSum(rs_in, rs_out);
  g.dp->StartAllGather(ag_in, ag_out);
  g.dp->WaitAsync();
  g.dp->AllReduceSum(a_ref);
  g.dp->ReduceScatterSum(rs_in, rs_ref);
  g.dp->AllGather(ag_in, ag_ref);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a.at(i), a_ref.at(i)) << i;
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(rs_out.at(i), rs_ref.at(i)) << i;
  for (int64_t i = 0; i < 2 * n; ++i) ASSERT_EQ(ag_out.at(i), ag_ref.at(i)) << i;
  // And really summed: element 0 over the two data-parallel ranks.
  EXPECT_EQ(a.at(0), 1 + 3 * g.tp_rank + 1 + 3 * (g.tp_rank + 2));

  // In place (ZeRO-1's buckets): the reduce-scatter's result in this rank's rows of its input,
  // the all-gather's input in this rank's rows of its output; blocking and started.
  const int64_t r = g.dp_rank;
  for (const bool started : {false, true}) {
    const Tensor rs = rs_in.Clone(), ag = Tensor::Zeros({2 * n}, DType::kF32);
    ag.Rows(r * n, (r + 1) * n).CopyFrom(ag_in);
    if (started) {
      g.dp->StartReduceScatterSum(rs, rs.Rows(r * n, (r + 1) * n));
      g.dp->StartAllGather(ag.Rows(r * n, (r + 1) * n), ag);
      g.dp->WaitAsync();
    } else {
      g.dp->ReduceScatterSum(rs, rs.Rows(r * n, (r + 1) * n));
      g.dp->AllGather(ag.Rows(r * n, (r + 1) * n), ag);
    }
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(rs.at(r * n + i), rs_ref.at(i)) << i << " " << started;
    for (int64_t i = 0; i < 2 * n; ++i) ASSERT_EQ(ag.at(i), ag_ref.at(i)) << i << " " << started;
  }
}

// Stands in for NCCL: counts the calls that reach it.
class CountingCommunicator : public Communicator {
 public:
  CountingCommunicator(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(const Tensor&) override { ++calls; }
  void AllReduceMax(const Tensor&) override { ++calls; }
  void AllGather(const Tensor&, const Tensor&) override { ++calls; }
  void ReduceScatterSum(const Tensor&, const Tensor&) override { ++calls; }
  void Broadcast(const Tensor&, int) override { ++calls; }
  void Barrier() override { ++calls; }
  int calls = 0;

 private:
  int rank_, size_;
};

// The communicator of a multi-GPU run (CPU tensors over MPI, CUDA tensors over NCCL): CPU tensors
// must reach MPI and give its results, and never the device transport.
TEST(ByDeviceCommunicator, CpuTensorsGoThroughTheHostGroup) {
  const ProcessGrid& g = Grid();
  auto counting = std::make_unique<CountingCommunicator>(g.tp->rank(), g.tp->size());
  CountingCommunicator* device = counting.get();
  auto tp = MakeByDeviceCommunicator(g.tp.get(), std::move(counting));
  EXPECT_EQ(tp->rank(), g.tp_rank);
  EXPECT_EQ(tp->size(), 2);
  const double r = g.world_rank;
  Tensor s = Values({r, 1});
  tp->AllReduceSum(s);  // {0,1} or {2,3}
  EXPECT_EQ(s.at(0), 4 * g.dp_rank + 1);
  EXPECT_EQ(s.at(1), 2);
  Tensor m = Values({-r});
  tp->AllReduceMax(m);
  EXPECT_EQ(m.at(0), -2 * g.dp_rank);
  Tensor members = Tensor::Empty({2}, DType::kF64);
  tp->AllGather(Values({r}), members);
  EXPECT_EQ(members.at(0), 2 * g.dp_rank);
  EXPECT_EQ(members.at(1), 2 * g.dp_rank + 1);
  Tensor mine = Tensor::Empty({1}, DType::kF64);
  tp->ReduceScatterSum(Values({r, 10 * r}), mine);  // row i of the sum over the group
  EXPECT_EQ(mine.at(0), (g.tp_rank == 0 ? 1 : 10) * (4 * g.dp_rank + 1));
  Tensor b = Values({r});
  tp->Broadcast(b, 1);
  EXPECT_EQ(b.at(0), 2 * g.dp_rank + 1);
  tp->Barrier();
  EXPECT_EQ(device->calls, 0);
#ifdef GDN_WITH_CUDA
  // Where a GPU is usable (the same answer on every rank of one machine): CUDA tensors go to the
  // device transport, and only there.
  if (cuda::GpuAvailable()) {
    Tensor d = Tensor::Zeros({2}, DType::kF32, Device::kCUDA);
    tp->AllReduceSum(d);
    tp->Broadcast(d, 0);
    EXPECT_EQ(device->calls, 2);
  }
#endif
}

// The collectives' timeout: a bad value must be refused, not replaced by the default.
TEST(CollectiveTimeout, FromEnvironment) {
  unsetenv("GDN_COLLECTIVE_TIMEOUT_S");
  EXPECT_EQ(CollectiveTimeoutFromEnv(), kDefaultCollectiveTimeoutS);
  setenv("GDN_COLLECTIVE_TIMEOUT_S", "", 1);
  EXPECT_EQ(CollectiveTimeoutFromEnv(), kDefaultCollectiveTimeoutS);
  setenv("GDN_COLLECTIVE_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(CollectiveTimeoutFromEnv(), 2.5);
  setenv("GDN_COLLECTIVE_TIMEOUT_S", "inf", 1);
  EXPECT_EQ(CollectiveTimeoutFromEnv(), std::numeric_limits<double>::infinity());
  for (const char* bad : {"abc", "0", "-3", "10s", "nan"}) {
    setenv("GDN_COLLECTIVE_TIMEOUT_S", bad, 1);
    EXPECT_EQ(CollectiveTimeoutFromEnv(), std::nullopt) << bad;
  }
  unsetenv("GDN_COLLECTIVE_TIMEOUT_S");
}

}  // namespace
}  // namespace gdn

int main(int argc, char** argv) {
  return gdn::RunTestsOnEveryRank(argc, argv, "communicator_tests must run under mpirun -np 4",
                                  [] { return gdn::Grid().world_rank; });
}
