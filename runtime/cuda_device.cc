// The process's GPU, stream and caching device allocator (see cuda_device.h).
#include "runtime/cuda_device.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

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

// Size classes: multiples of 512 bytes up to 1 MiB, then multiples of 2 MiB, so the slightly
// different sizes of one step's buffers share blocks without wasting more than a little.
size_t SizeClass(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20;
  if (bytes <= (size_t{1} << 20)) return std::max(kSmall, (bytes + kSmall - 1) / kSmall * kSmall);
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

// All device work runs on the one stream in issue order, so a block freed on the host while
// kernels that use it are still queued can be handed to the next op at once: that op's kernels
// run after them.
class DeviceCache {
 public:
  void* Get(size_t bytes) {
    const size_t cls = SizeClass(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(cls);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= cls;
        Count(cls);
        return p;
      }
    }
    State();  // the device is chosen before the first allocation
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear it, give the cache back and try once more
      Release();
      err = cudaMalloc(&p, cls);
    }
    CHECK(err == cudaSuccess) << "cudaMalloc(" << cls << " bytes): " << cudaGetErrorString(err)
                              << " (" << allocated_ << " bytes in use)";
    std::lock_guard<std::mutex> lock(mu_);
    Count(cls);
    return p;
  }
  void Put(void* p, size_t bytes) {
    const size_t cls = SizeClass(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(cls, p);
    cached_ += cls;
    allocated_ -= cls;
  }
  size_t Release() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return 0;
    // Queued kernels may still use a cached block (see above): wait for them first.
    CUDA_CHECK(cudaStreamSynchronize(State().stream));
    for (auto& [cls, p] : free_) CUDA_CHECK(cudaFree(p));
    free_.clear();
    const size_t released = cached_;
    cached_ = 0;
    return released;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  size_t allocated() {
    std::lock_guard<std::mutex> lock(mu_);
    return allocated_;
  }
  size_t peak() {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }

 private:
  void Count(size_t cls) {  // mu_ held
    allocated_ += cls;
    peak_ = std::max(peak_, allocated_);
  }
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, allocated_ = 0, peak_ = 0;
};

DeviceCache& Cache() {
  static DeviceCache* cache = new DeviceCache();
  return *cache;
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

void* DeviceAlloc(size_t bytes) { return Cache().Get(bytes); }
void DeviceFree(void* p, size_t bytes) { Cache().Put(p, bytes); }
size_t ReleaseDeviceCache() { return Cache().Release(); }
size_t DeviceCachedBytes() { return Cache().cached(); }
size_t DeviceAllocatedBytes() { return Cache().allocated(); }
size_t DevicePeakAllocatedBytes() { return Cache().peak(); }

size_t DeviceBytesInUseByAll() {
  Stream();  // the device is chosen first
  size_t free = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return total - free;
}

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

void Synchronize() { CUDA_CHECK(cudaStreamSynchronize(Stream())); }

}  // namespace gdn::cuda
