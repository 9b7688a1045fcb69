#include "runtime/mpi_communicator.h"

#include <mpi.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"

namespace gdn {

namespace {

MPI_Datatype MpiType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI32: return MPI_INT;
    case DType::kBF16: break;  // no MPI type, and never reduced
  }
  LOG(FATAL) << "MPI collective on a " << DTypeName(dtype) << " tensor";
  return MPI_BYTE;
}

void Check(int rc, const char* what) { CHECK_EQ(rc, MPI_SUCCESS) << what << " failed"; }

// Plain MPI reads and writes host memory: device buffers go through the NCCL communicator.
const Tensor& OnCpu(const Tensor& t) {
  CHECK(t.device() == Device::kCPU) << "MPI collectives take CPU tensors (NCCL for CUDA tensors)";
  return t;
}

// Every collective, blocking or started, is waited for with a deadline (GDN_COLLECTIVE_TIMEOUT_S):
// a rank that stopped or hangs ends the job with a message instead of leaving the others waiting.
class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(const Tensor& t) override {
    OnCpu(t);
    if (size_ == 1) return;
    MPI_Request r;
    Check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), t.numel(), MpiType(t.dtype()), MPI_SUM, comm_, &r),
          "MPI_Iallreduce");
    Wait(&r, 1, "all-reduce");
  }
  void AllReduceMax(const Tensor& t) override {
    OnCpu(t);
    if (size_ == 1) return;
    MPI_Request r;
    Check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), t.numel(), MpiType(t.dtype()), MPI_MAX, comm_, &r),
          "MPI_Iallreduce");
    Wait(&r, 1, "all-reduce (max)");
  }
  void AllGather(const Tensor& in, const Tensor& out) override {
    CHECK_EQ(OnCpu(out).numel(), OnCpu(in).numel() * size_);
    MPI_Request r;
    Check(MPI_Iallgather(GatherSend(in, out), in.numel(), MpiType(in.dtype()), out.raw(),
                         in.numel(), MpiType(out.dtype()), comm_, &r),
          "MPI_Iallgather");
    Wait(&r, 1, "all-gather");
  }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override {
    CHECK_EQ(OnCpu(in).numel(), OnCpu(out).numel() * size_);
    const bool in_place = ScatterInPlace(in, out);
    MPI_Request r;
    Check(MPI_Ireduce_scatter_block(in_place ? MPI_IN_PLACE : in.raw(),
                                    in_place ? in.raw() : out.raw(), out.numel(),
                                    MpiType(in.dtype()), MPI_SUM, comm_, &r),
          "MPI_Ireduce_scatter_block");
    Wait(&r, 1, "reduce-scatter");
    if (in_place) MoveResult(in, out);
  }
  void Broadcast(const Tensor& t, int root) override {
    OnCpu(t);
    MPI_Request r;
    Check(MPI_Ibcast(t.raw(), t.numel(), MpiType(t.dtype()), root, comm_, &r), "MPI_Ibcast");
    Wait(&r, 1, "broadcast");
  }
  void Barrier() override {
    MPI_Request r;
    Check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
    Wait(&r, 1, "barrier");
  }

  // MPI's non-blocking collectives. Open MPI moves them on only inside MPI calls, so each start
  // also tests the earlier ones: the backward's hooks then drive the transfers along.
  void StartAllReduceSum(const Tensor& t) override {
    OnCpu(t);
    if (size_ == 1) return;
    Check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), t.numel(), MpiType(t.dtype()), MPI_SUM, comm_,
                         NewRequest()),
          "MPI_Iallreduce");
  }
  void StartReduceScatterSum(const Tensor& in, const Tensor& out) override {
    CHECK_EQ(OnCpu(in).numel(), OnCpu(out).numel() * size_);
    const bool in_place = ScatterInPlace(in, out);
    Check(MPI_Ireduce_scatter_block(in_place ? MPI_IN_PLACE : in.raw(),
                                    in_place ? in.raw() : out.raw(), out.numel(),
                                    MpiType(in.dtype()), MPI_SUM, comm_, NewRequest()),
          "MPI_Ireduce_scatter_block");
    if (in_place) moves_.emplace_back(in, out);
  }
  void StartAllGather(const Tensor& in, const Tensor& out) override {
    CHECK_EQ(OnCpu(out).numel(), OnCpu(in).numel() * size_);
    Check(MPI_Iallgather(GatherSend(in, out), in.numel(), MpiType(in.dtype()), out.raw(),
                         in.numel(), MpiType(out.dtype()), comm_, NewRequest()),
          "MPI_Iallgather");
  }
  void WaitAsync() override {
    if (requests_.empty()) return;
    Wait(requests_.data(), static_cast<int>(requests_.size()), "started collective");
    requests_.clear();
    for (const auto& [in, out] : moves_) MoveResult(in, out);
    moves_.clear();
  }

 private:
  // MPI's in-place forms: an all-gather whose input is its own rows of the output sends
  // MPI_IN_PLACE; an in-place reduce-scatter leaves the result at the start of the buffer, from
  // where it moves to this rank's rows.
  const void* GatherSend(const Tensor& in, const Tensor& out) const {
    const char* own = static_cast<const char*>(out.raw()) + rank_ * in.nbytes();
    return in.raw() == own ? MPI_IN_PLACE : in.raw();
  }
  bool ScatterInPlace(const Tensor& in, const Tensor& out) const {
    return out.raw() == static_cast<const char*>(in.raw()) + rank_ * out.nbytes();
  }
  static void MoveResult(const Tensor& in, const Tensor& out) {
    if (in.raw() != out.raw()) std::memmove(out.raw(), in.raw(), out.nbytes());
  }

  // Waits for n requests; past the deadline, says which collective and ends the job.
  void Wait(MPI_Request* requests, int n, const char* what) {
    const double start = MPI_Wtime();
    for (int polls = 0;; ++polls) {
      int done = 0;
      Check(MPI_Testall(n, requests, &done, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (done) return;
      // Spin first (most collectives finish within microseconds), then yield the core.
      if (polls > 1000) usleep(polls > 100000 ? 1000 : 20);
      if (MPI_Wtime() - start > timeout_s_) {
        int world_rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        std::fprintf(stderr,
                     "error: MPI %s in a group of %d ranks (world rank %d) not finished after "
                     "%.0f s (GDN_COLLECTIVE_TIMEOUT_S): another rank stopped or hangs\n",
                     what, size_, world_rank, timeout_s_);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
  }

  MPI_Request* NewRequest() {
    if (!requests_.empty()) {
      int done = 0;
      Check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                        MPI_STATUSES_IGNORE),
            "MPI_Testall");
      if (done) requests_.clear();
    }
    requests_.push_back(MPI_REQUEST_NULL);
    return &requests_.back();
  }

  MPI_Comm comm_;
  double timeout_s_;
  std::vector<MPI_Request> requests_;  // started, not yet waited for
  std::vector<std::pair<Tensor, Tensor>> moves_;  // in-place reduce-scatters, moved after the wait
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool LaunchedByMpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

absl::StatusOr<ProcessGrid> ProcessGrid::Create(int tensor_parallel) {
  ProcessGrid g;
  if (!LaunchedByMpi()) {
    if (tensor_parallel != 1)
      return absl::InvalidArgumentError(absl::StrFormat(
          "parallel.tensor_parallel: %d needs %d ranks (start gdn with mpirun -np %d or srun), this "
          "job has 1",
          tensor_parallel, tensor_parallel, tensor_parallel));
    g.world = MakeSingleRankCommunicator();
    g.tp = MakeSingleRankCommunicator();
    g.dp = MakeSingleRankCommunicator();
    return g;
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
  // A collective that fails makes MPI abort the whole job rather than hang on the others.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
  MPI_Comm_rank(MPI_COMM_WORLD, &g.world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g.world_size);
  const std::optional<double> timeout_s = CollectiveTimeoutFromEnv();
  if (!timeout_s.has_value())
    return absl::InvalidArgumentError(absl::StrFormat(
        "GDN_COLLECTIVE_TIMEOUT_S: '%s' is not a number of seconds > 0 (or inf)",
        std::getenv("GDN_COLLECTIVE_TIMEOUT_S")));
  if (tensor_parallel < 1 || g.world_size % tensor_parallel != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.tensor_parallel: %d does not divide the job's %d ranks", tensor_parallel,
        g.world_size));
  g.tp_size = tensor_parallel;
  g.tp_rank = g.world_rank % tensor_parallel;
  g.dp_size = g.world_size / tensor_parallel;
  g.dp_rank = g.world_rank / tensor_parallel;
  MPI_Comm tp_comm, dp_comm;
  MPI_Comm_split(MPI_COMM_WORLD, g.dp_rank, g.tp_rank, &tp_comm);
  MPI_Comm_split(MPI_COMM_WORLD, g.tp_rank, g.dp_rank, &dp_comm);
  g.world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, *timeout_s);
  g.tp = std::make_unique<MpiCommunicator>(tp_comm, *timeout_s);
  g.dp = std::make_unique<MpiCommunicator>(dp_comm, *timeout_s);
  return g;
}

void AwaitAllRanksBeforeExit(double max_seconds) {
  if (!LaunchedByMpi()) return;
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
  // A non-blocking barrier with a deadline: a rank that is not failing cannot hang this one.
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  const double deadline = MPI_Wtime() + max_seconds;
  int done = 0;
  while (!done && MPI_Wtime() < deadline) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (!done) usleep(1000);
  }
  if (done) MPI_Finalize();
}

void FinalizeMpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

}  // namespace gdn
