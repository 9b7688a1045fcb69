#include "runtime/nccl_communicator.h"

#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "runtime/cuda_check.h"

namespace gdn {

namespace {

#define NCCL_CHECK(call)                                                                \
  do {                                                                                  \
    const ncclResult_t gdn_nccl_res_ = (call);                                          \
    CHECK(gdn_nccl_res_ == ncclSuccess) << #call << ": " << ncclGetErrorString(gdn_nccl_res_); \
  } while (0)

ncclDataType_t NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kI32: return ncclInt32;
    case DType::kBF16: return ncclBfloat16;
  }
  return ncclFloat32;
}

const Tensor& OnCuda(const Tensor& t, const char* what) {
  CHECK(t.device() == Device::kCUDA) << "NCCL " << what << " takes CUDA tensors";
  return t;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, double timeout_s)
      : comm_(comm), rank_(rank), size_(size), device_(cuda::CurrentDevice()),
        timeout_s_(timeout_s) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&async_stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&async_done_, cudaEventDisableTiming));
    watchdog_ = std::thread([this] { Watch(); });
  }
  ~NcclCommunicator() override {
    cuda::Synchronize();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    watchdog_.join();
    cudaStreamSynchronize(async_stream_);
    for (const Pending& p : pending_) cudaEventDestroy(p.done);
    for (cudaEvent_t e : idle_events_) cudaEventDestroy(e);
    for (const auto& [begin, end] : timed_) {
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
    }
    cudaEventDestroy(inputs_ready_);
    cudaEventDestroy(async_done_);
    cudaStreamDestroy(async_stream_);
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(const Tensor& t) override { AllReduce(t, ncclSum, cuda::Stream()); }
  void AllReduceMax(const Tensor& t) override { AllReduce(t, ncclMax, cuda::Stream()); }
  void AllGather(const Tensor& in, const Tensor& out) override {
    Gather(in, out, cuda::Stream());
  }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override {
    ReduceScatter(in, out, cuda::Stream());
  }

  // The started collectives run on their own stream, after the process stream's work queued so
  // far (which writes their inputs); WaitAsync makes the process stream wait for them. Their
  // tensors are held until then: the allocator hands a freed block to the process stream's next
  // op at once, which must not happen while a collective on the other stream still uses it.
  void StartAllReduceSum(const Tensor& t) override {
    BeginAsync({t});
    AllReduce(t, ncclSum, async_stream_);
    EndAsync();
  }
  void StartReduceScatterSum(const Tensor& in, const Tensor& out) override {
    BeginAsync({in, out});
    ReduceScatter(in, out, async_stream_);
    EndAsync();
  }
  void StartAllGather(const Tensor& in, const Tensor& out) override {
    BeginAsync({in, out});
    Gather(in, out, async_stream_);
    EndAsync();
  }
  void WaitAsync() override {
    CUDA_CHECK(cudaEventRecord(async_done_, async_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(cuda::Stream(), async_done_, 0));
    in_flight_.clear();  // work queued from now on runs after the collectives
  }
  void SetAsyncTiming(bool on) override { timing_ = on; }
  std::vector<double> TakeAsyncTimes() override {
    std::vector<double> seconds;
    CUDA_CHECK(cudaStreamSynchronize(async_stream_));
    for (const auto& [begin, end] : timed_) {
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
      seconds.push_back(ms / 1e3);
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
    }
    timed_.clear();
    return seconds;
  }
  void Broadcast(const Tensor& t, int root) override {
    OnCuda(t, "Broadcast");
    NCCL_CHECK(ncclBroadcast(t.raw(), t.raw(), t.numel(), NcclType(t.dtype()), root, comm_,
                             cuda::Stream()));
    Track("Broadcast", cuda::Stream());
  }
  // NCCL has no barrier: a one-element all-reduce, waited for.
  void Barrier() override {
    Tensor t = Tensor::Zeros({1}, DType::kI32, Device::kCUDA);
    AllReduce(t, ncclSum, cuda::Stream());
    cuda::Synchronize();
  }

 private:
  void AllReduce(const Tensor& t, ncclRedOp_t op, cudaStream_t stream) {
    OnCuda(t, "AllReduce");
    NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), t.numel(), NcclType(t.dtype()), op, comm_, stream));
    Track("AllReduce", stream);
  }
  void Gather(const Tensor& in, const Tensor& out, cudaStream_t stream) {
    OnCuda(in, "AllGather");
    OnCuda(out, "AllGather");
    CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * size_);
    NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), in.numel(), NcclType(in.dtype()), comm_, stream));
    Track("AllGather", stream);
  }
  void ReduceScatter(const Tensor& in, const Tensor& out, cudaStream_t stream) {
    OnCuda(in, "ReduceScatterSum");
    OnCuda(out, "ReduceScatterSum");
    CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * size_);
    NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), out.numel(), NcclType(in.dtype()), ncclSum,
                                 comm_, stream));
    Track("ReduceScatter", stream);
  }

  void BeginAsync(std::initializer_list<Tensor> tensors) {
    in_flight_.insert(in_flight_.end(), tensors);
    CUDA_CHECK(cudaEventRecord(inputs_ready_, cuda::Stream()));
    CUDA_CHECK(cudaStreamWaitEvent(async_stream_, inputs_ready_, 0));
    if (!timing_) return;
    timed_.emplace_back();
    CUDA_CHECK(cudaEventCreate(&timed_.back().first));
    CUDA_CHECK(cudaEventCreate(&timed_.back().second));
    CUDA_CHECK(cudaEventRecord(timed_.back().first, async_stream_));
  }
  void EndAsync() {
    if (timing_) CUDA_CHECK(cudaEventRecord(timed_.back().second, async_stream_));
  }

  // A queued collective: an event recorded after it on the stream, and when it was queued.
  struct Pending {
    cudaEvent_t done;
    const char* what;
    std::chrono::steady_clock::time_point queued;
  };

  void Track(const char* what, cudaStream_t stream) {
    cudaEvent_t e = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_events_.empty()) {
        e = idle_events_.back();
        idle_events_.pop_back();
      }
    }
    if (e == nullptr) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(e, stream));
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({e, what, std::chrono::steady_clock::now()});
  }

  // NCCL reports a peer's failure only through ncclCommGetAsyncError, and a collective waiting
  // for a stopped peer never returns: both would leave this rank waiting forever.
  void Watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stop_; })) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t res = ncclCommGetAsyncError(comm_, &async);
      if (res != ncclSuccess || (async != ncclSuccess && async != ncclInProgress))
        Fail(absl::StrFormat("NCCL error in a group of %d ranks (rank %d, GPU %d): %s", size_,
                             rank_, device_, ncclGetErrorString(res != ncclSuccess ? res : async)));
      // Finished collectives (or ones whose stream failed: the main thread reports that).
      while (!pending_.empty() && cudaEventQuery(pending_.front().done) != cudaErrorNotReady) {
        idle_events_.push_back(pending_.front().done);
        pending_.pop_front();
      }
      (void)cudaGetLastError();
      if (pending_.empty()) continue;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                          pending_.front().queued).count();
      if (waited > timeout_s_)
        Fail(absl::StrFormat(
            "NCCL %s in a group of %d ranks (rank %d, GPU %d) not finished after %.0f s "
            "(GDN_COLLECTIVE_TIMEOUT_S): another rank stopped or hangs",
            pending_.front().what, size_, rank_, device_, waited));
    }
  }

  // Ends this process, so the launcher ends the job rather than leaving the others waiting.
  [[noreturn]] void Fail(const std::string& why) {
    ncclCommAbort(comm_);
    LOG(FATAL) << why;
    std::abort();
  }

  ncclComm_t comm_;
  int rank_, size_;
  const int device_;
  const double timeout_s_;
  cudaStream_t async_stream_ = nullptr;  // the started (Start*) collectives
  std::vector<Tensor> in_flight_;          // their tensors, until WaitAsync
  cudaEvent_t inputs_ready_ = nullptr, async_done_ = nullptr;
  bool timing_ = false;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> timed_;  // (begin, end) per timed collective
  std::mutex mu_;  // guards what follows, shared with the watchdog
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> idle_events_;
  bool stop_ = false;
  std::condition_variable stop_cv_;
  std::thread watchdog_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap,
                                                                   double timeout_s) {
  // Rank 0's id and, in the last element, whether it could make one (so no rank waits forever).
  static_assert(sizeof(ncclUniqueId) % sizeof(int32_t) == 0);
  constexpr int64_t kIdInts = sizeof(ncclUniqueId) / sizeof(int32_t);
  Tensor id_buf = Tensor::Zeros({kIdInts + 1}, DType::kI32);
  ncclUniqueId id;
  ncclResult_t res = ncclSuccess;
  if (bootstrap.rank() == 0) {
    res = ncclGetUniqueId(&id);
    if (res == ncclSuccess) std::memcpy(id_buf.raw(), &id, sizeof(id));
    id_buf.data<int32_t>()[kIdInts] = static_cast<int32_t>(res);
  }
  bootstrap.Broadcast(id_buf, 0);
  if (id_buf.data<int32_t>()[kIdInts] != ncclSuccess)
    return absl::UnavailableError(absl::StrFormat(
        "ncclGetUniqueId on rank 0: %s",
        ncclGetErrorString(static_cast<ncclResult_t>(id_buf.data<int32_t>()[kIdInts]))));
  std::memcpy(&id, id_buf.raw(), sizeof(id));
  cuda::Stream();  // the process's GPU is chosen (from the local rank) before NCCL binds to it
  ncclComm_t comm;
  res = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  if (res != ncclSuccess)
    return absl::UnavailableError(absl::StrFormat(
        "NCCL set-up of %d ranks (rank %d on GPU %d): %s", bootstrap.size(), bootstrap.rank(),
        cuda::CurrentDevice(), ncclGetErrorString(res)));
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, bootstrap.rank(), bootstrap.size(), timeout_s));
}

absl::StatusOr<ProcessGrid> WithNcclForCudaTensors(const ProcessGrid& grid) {
  // One GPU per rank: NCCL cannot put two ranks of a group on one GPU, and sharing one would
  // silently halve each rank's memory. GPUs are told apart by UUID, whatever each rank sees.
  Communicator& world = *grid.world;
  const int device = cuda::CurrentDevice();
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  // The watchdog's timeout: a bad value on any rank fails all of them alike.
  const std::optional<double> timeout_s = CollectiveTimeoutFromEnv();
  constexpr int kRow = 7;  // UUID (16 bytes), device index, visible devices, timeout valid
  static_assert(sizeof(prop.uuid.bytes) == 4 * sizeof(int32_t));
  Tensor mine = Tensor::Empty({1, kRow}, DType::kI32);
  Tensor rows = Tensor::Empty({world.size(), kRow}, DType::kI32);
  std::memcpy(mine.raw(), prop.uuid.bytes, sizeof(prop.uuid.bytes));
  mine.data<int32_t>()[4] = device;
  mine.data<int32_t>()[5] = cuda::VisibleDeviceCount();
  mine.data<int32_t>()[6] = timeout_s.has_value() ? 1 : 0;
  world.AllGather(mine, rows);
  const int32_t* r = rows.data<int32_t>();
  for (int a = 0; a < world.size(); ++a)
    if (r[a * kRow + 6] == 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "GDN_COLLECTIVE_TIMEOUT_S (world rank %d): not a number of seconds > 0", a));
  for (int a = 0; a < world.size(); ++a)
    for (int b = a + 1; b < world.size(); ++b)
      if (std::memcmp(r + a * kRow, r + b * kRow, sizeof(prop.uuid.bytes)) == 0)
        return absl::InvalidArgumentError(absl::StrFormat(
            "run.device: CUDA needs one GPU per rank, but world ranks %d and %d both got GPU %d "
            "of a node with %d visible GPUs: start at most as many ranks per node as it has GPUs",
            a, b, r[a * kRow + 4], r[a * kRow + 5]));

  ProcessGrid out;
  out.world_rank = grid.world_rank;
  out.world_size = grid.world_size;
  out.tp_rank = grid.tp_rank;
  out.tp_size = grid.tp_size;
  out.dp_rank = grid.dp_rank;
  out.dp_size = grid.dp_size;
  auto both = [&](Communicator* host) -> absl::StatusOr<std::unique_ptr<Communicator>> {
    if (host->size() == 1) return MakeByDeviceCommunicator(host, MakeSingleRankCommunicator());
    auto nccl = MakeNcclCommunicator(*host, *timeout_s);
    // All ranks of the group learn whether every one of them has its communicator.
    Tensor failed = Tensor::Zeros({1}, DType::kI32);
    failed.set(0, nccl.ok() ? 0 : 1);
    host->AllReduceMax(failed);
    if (!nccl.ok()) return nccl.status();
    if (failed.at(0) != 0)
      return absl::UnavailableError(absl::StrFormat(
          "NCCL set-up failed on another rank of a group of %d", host->size()));
    return MakeByDeviceCommunicator(host, std::move(*nccl));
  };
  for (auto [host, comm] : {std::pair{grid.world.get(), &out.world}, {grid.tp.get(), &out.tp},
                            {grid.dp.get(), &out.dp}}) {
    auto c = both(host);
    if (!c.ok()) return c.status();
    *comm = std::move(*c);
  }
  return out;
}

}  // namespace gdn
