// The CUDA device as the runtime sees it: which GPU this process uses, its one stream, device
// memory (a caching allocator) and copies. Plain C++ (no CUDA headers), so host code such as
// tensor.cc can call it; kernels use runtime/cuda_check.h for the stream and error checks.
// Only built with GDN_WITH_CUDA (see the top-level CMakeLists.txt).
#pragma once

#include <cstddef>
#include <string>

namespace gdn::cuda {

// Whether a usable GPU exists (a driver, at least one device, and a context can be made); when
// not, *why says what is missing. Never aborts: tests call it to decide whether to skip.
bool GpuAvailable(std::string* why = nullptr);

// The number of GPUs this process can see (0 without a driver or device).
int VisibleDeviceCount();

// The node-local rank of this process under mpirun (OMPI_COMM_WORLD_LOCAL_RANK), srun
// (SLURM_LOCALID) or MPICH (MPI_LOCALRANKID); 0 when started alone.
int LocalRank();
// The GPU this process uses: LocalRank() modulo the number of visible devices. Chosen (and made
// current) on first use of the device; later calls return the same.
int CurrentDevice();
// "GPU 0 of 2 (NVIDIA H100 80GB HBM3, PCI 0000:1b:00.0)": which physical GPU this process uses,
// for run logs (the PCI address tells GPUs apart under CUDA_VISIBLE_DEVICES).
std::string DescribeCurrentDevice();

// Device memory from a cache of freed blocks, split and merged (runtime/block_pool.h; cudaMalloc
// only when no cached block fits; no managed memory). Blocks are used in stream order, so a block
// freed by one op can be reused by the next.
void* DeviceAlloc(size_t bytes);
void DeviceFree(void* p);
// Returns the wholly free cached segments to the driver; bytes released.
size_t ReleaseDeviceCache();
// Bytes currently held in the cache and bytes handed out (for tests and memory reports), and the
// most bytes handed out at once since the process started (sizes rounded up to 512 bytes).
size_t DeviceCachedBytes();
size_t DeviceAllocatedBytes();
size_t DevicePeakAllocatedBytes();
// The GPU's memory in use by everything (total minus free, as nvidia-smi shows it): this process's
// cache and CUDA context, cuBLAS's workspaces, the gated delta rule's scratch pool, other
// processes on the same GPU.
size_t DeviceBytesInUseByAll();
// The GPU's memory in all (cudaMemGetInfo's total).
size_t DeviceTotalBytes();

// Copies and memset on the process's stream. Copies that touch host memory wait for completion,
// so the host buffer may be reused or freed at once.
void CopyHostToDevice(void* dst, const void* src, size_t bytes);
void CopyDeviceToHost(void* dst, const void* src, size_t bytes);
void CopyDeviceToDevice(void* dst, const void* src, size_t bytes);
void MemsetZero(void* p, size_t bytes);
// Zeros `rows` rows of `bytes` bytes each, `pitch` bytes apart.
void MemsetZero2D(void* p, size_t pitch, size_t bytes, size_t rows);
// Waits for all work queued on the process's stream (and checks it for errors).
void Synchronize();

}  // namespace gdn::cuda
