#include "runtime/nccl_communicator.h"

#include <nccl.h>

#include <cstring>

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
  }
  return ncclFloat32;
}

const Tensor& OnCuda(const Tensor& t, const char* what) {
  CHECK(t.device() == Device::kCUDA) << "NCCL " << what << " takes CUDA tensors";
  return t;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~NcclCommunicator() override {
    cuda::Synchronize();
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(const Tensor& t) override { AllReduce(t, ncclSum); }
  void AllReduceMax(const Tensor& t) override { AllReduce(t, ncclMax); }
  void AllGather(const Tensor& in, const Tensor& out) override {
    OnCuda(in, "AllGather");
    OnCuda(out, "AllGather");
    CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * size_);
    NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), in.numel(), NcclType(in.dtype()), comm_,
                             cuda::Stream()));
  }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override {
    OnCuda(in, "ReduceScatterSum");
    OnCuda(out, "ReduceScatterSum");
    CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * size_);
    NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), out.numel(), NcclType(in.dtype()), ncclSum,
                                 comm_, cuda::Stream()));
  }
  void Broadcast(const Tensor& t, int root) override {
    OnCuda(t, "Broadcast");
    NCCL_CHECK(ncclBroadcast(t.raw(), t.raw(), t.numel(), NcclType(t.dtype()), root, comm_,
                             cuda::Stream()));
  }
  // NCCL has no barrier: a one-element all-reduce, waited for.
  void Barrier() override {
    Tensor t = Tensor::Zeros({1}, DType::kI32, Device::kCUDA);
    AllReduce(t, ncclSum);
    cuda::Synchronize();
  }

 private:
  void AllReduce(const Tensor& t, ncclRedOp_t op) {
    OnCuda(t, "AllReduce");
    NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), t.numel(), NcclType(t.dtype()), op, comm_,
                             cuda::Stream()));
  }

  ncclComm_t comm_;
  int rank_, size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap) {
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
      new NcclCommunicator(comm, bootstrap.rank(), bootstrap.size()));
}

}  // namespace gdn
