// The process's GPU, stream and caching device allocator (see cuda_device.h).
#include "runtime/cuda_device.h"

#include <cstdlib>
#include <utility>

#include "runtime/block_pool.h"
#include "runtime/tensor.h"
#include "runtime/cuda_check.h"

namespace gdn::cuda {

namespace {

struct DeviceState {
  int device = -1;
  cudaStream_t stream = nullptr;
};

DeviceState& State() {
  // Made once, on first use; never destroyed (tensors may be freed after main returns).
  static DeviceState* state = [] {
    auto* s = new DeviceState();
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    CHECK_GT(count, 0) << "no CUDA device";
    s->device = LocalRank() % count;
    CUDA_CHECK(cudaSetDevice(s->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    return s;
  }();
  return *state;
}

// cudaMalloc behind a BlockPool (runtime/block_pool.h). All device work runs on the one stream in
// issue order, so a block freed on the host while kernels that use it are still queued can be
// handed to the next op at once: that op's kernels run after them.
BlockPool& Pool() {
  static BlockPool* pool = new BlockPool(
      [](size_t bytes) -> void* {
        State();  // the device is chosen before the first allocation
        void* p = nullptr;
        const cudaError_t err = cudaMalloc(&p, bytes);
        if (err == cudaErrorMemoryAllocation) {
          (void)cudaGetLastError();  // cleared: the caller may release the cache and retry
          return nullptr;
        }
        CUDA_CHECK(err);
        return p;
      },
      [](void* p) { CUDA_CHECK(cudaFree(p)); });
  return *pool;
}

size_t ReleaseCache() {
  // Nothing cached: nothing to wait for, and no device to touch (CPU-only runs call this too).
  if (Pool().cached() == 0) return 0;
  // Queued kernels may still use a cached block (see above): wait for them first.
  CUDA_CHECK(cudaStreamSynchronize(State().stream));
  return Pool().Release();
}

}  // namespace

bool GpuAvailable(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && count == 0) err = cudaErrorNoDevice;
  if (err == cudaSuccess) err = cudaSetDevice(LocalRank() % count);
  if (err == cudaSuccess) err = cudaFree(nullptr);  // makes the context: fails on a broken driver
  if (err != cudaSuccess) {
    if (why) *why = std::string("no usable CUDA GPU: ") + cudaGetErrorString(err);
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

int VisibleDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

int LocalRank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 0;
}

int CurrentDevice() { return State().device; }

std::string DescribeCurrentDevice() {
  const int device = CurrentDevice();
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  char bus[32] = {0};
  CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof(bus), device));
  return std::string("GPU ") + std::to_string(device) + " of " + std::to_string(VisibleDeviceCount()) +
         " (" + prop.name + ", PCI " + bus + ")";
}

cudaStream_t Stream() { return State().stream; }

void* DeviceAlloc(size_t bytes) {
  void* p = Pool().Get(bytes);
  if (p == nullptr) {  // give the cache back and try once more
    ReleaseCache();
    p = Pool().Get(bytes);
  }
  if (p == nullptr) ExitOutOfMemory("GPU", bytes, Pool().allocated());
  return p;
}
void DeviceFree(void* p) { Pool().Put(p); }
size_t ReleaseDeviceCache() { return ReleaseCache(); }
size_t DeviceCachedBytes() { return Pool().cached(); }
size_t DeviceAllocatedBytes() { return Pool().allocated(); }
size_t DevicePeakAllocatedBytes() { return Pool().peak(); }

namespace {
// cudaMemGetInfo of this process's GPU: {free, total}.
std::pair<size_t, size_t> MemInfo() {
  Stream();  // the device is chosen first
  size_t free = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return {free, total};
}
}  // namespace

size_t DeviceBytesInUseByAll() {
  const auto [free, total] = MemInfo();
  return total - free;
}
size_t DeviceTotalBytes() { return MemInfo().second; }

void CopyHostToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, Stream()));
  CUDA_CHECK(cudaStreamSynchronize(Stream()));
}

void CopyDeviceToHost(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, Stream()));
  CUDA_CHECK(cudaStreamSynchronize(Stream()));
}

void CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, Stream()));
}

void MemsetZero(void* p, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, Stream()));
}

void MemsetZero2D(void* p, size_t pitch, size_t bytes, size_t rows) {
  if (bytes == 0 || rows == 0) return;
  CUDA_CHECK(cudaMemset2DAsync(p, pitch, 0, bytes, rows, Stream()));
}

void Synchronize() { CUDA_CHECK(cudaStreamSynchronize(Stream())); }

}  // namespace gdn::cuda
