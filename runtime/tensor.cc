#include "runtime/tensor.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#ifdef GDN_WITH_CUDA
#include "runtime/cuda_device.h"
#endif

namespace gdn {

namespace {
// A caching allocator: a training step allocates the same buffer sizes every step, so freed
// blocks are kept by size and handed out again instead of going back to the system (which would
// cost page faults on every first touch, every step).
class BlockCache {
 public:
  void* Get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_bytes_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) {  // give the cache back and try once more
      Release();
      p = std::aligned_alloc(64, bytes);
    }
    if (p == nullptr) ExitOutOfMemory("host", bytes, 0);
    return p;
  }
  void Put(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(bytes, p);
    cached_bytes_ += bytes;
  }
  size_t Release() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [bytes, p] : free_) std::free(p);
    free_.clear();
    const size_t released = cached_bytes_;
    cached_bytes_ = 0;
    return released;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
};

BlockCache& Cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive main
  return *cache;
}
}  // namespace

size_t ReleaseCachedMemory() {
  size_t released = Cache().Release();
#ifdef GDN_WITH_CUDA
  released += cuda::ReleaseDeviceCache();
#endif
  return released;
}

void ExitOutOfMemory(const char* memory, size_t bytes, size_t in_use) {
  std::fflush(stdout);
  std::fprintf(stderr, "error: out of %s memory allocating %.3g GB", memory, bytes / 1e9);
  if (in_use > 0) std::fprintf(stderr, " (%.3g GB held by tensors)", in_use / 1e9);
  std::fprintf(stderr, "; reduce data.batch_size, or set data.micro_batch_size or "
                       "run.recompute\n");
  std::fflush(stderr);
  std::_Exit(1);  // no destructors: other threads and the GPU may still be using memory
}

const char* DeviceName(Device device) { return device == Device::kCPU ? "cpu" : "cuda"; }

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kBF16: return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF64: return "float64";
    case DType::kI32: return "int32";
    case DType::kBF16: return "bfloat16";
  }
  return "?";
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string ShapeString(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  if (device == Device::kCUDA) {
#ifdef GDN_WITH_CUDA
    // Blocks are 512-byte aligned, sizes rounded up to 512 bytes (runtime/block_pool.h).
    t.storage_ = std::shared_ptr<void>(cuda::DeviceAlloc(t.nbytes()),
                                       [](void* p) { cuda::DeviceFree(p); });
    return t;
#else
    LOG(FATAL) << "this binary was built without CUDA (GDN_WITH_CUDA off): no CUDA tensors";
#endif
  }
  // 64-byte alignment keeps vector loads aligned; at least one element so data() is valid.
  const size_t bytes = std::max<size_t>(64, (t.nbytes() + 63) / 64 * 64);
  t.storage_ = std::shared_ptr<void>(Cache().Get(bytes), [bytes](void* p) { Cache().Put(p, bytes); });
  return t;
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  t.SetZero();
  return t;
}

Tensor Tensor::View(const Shape& shape) const {
  CHECK_EQ(NumElements(shape), numel()) << ShapeString(shape_) << " -> " << ShapeString(shape);
  CHECK(contiguous() || (!shape.empty() && shape.back() == dim(-1)))
      << "a column view " << ShapeString(shape_) << " keeps its last dimension, not -> "
      << ShapeString(shape);
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::Rows(int64_t begin, int64_t end) const {
  CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0]);
  Tensor t = *this;
  const int64_t row = numel() / std::max<int64_t>(shape_[0], 1);  // elements per index
  // In memory, an index spans row / dim(-1) rows of the last dimension.
  const int64_t span = contiguous() ? row : row / dim(-1) * row_stride_;
  t.offset_ += begin * span * DTypeSize(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

int64_t RowStride(const Tensor& t, int64_t cols, const char* what) {
  if (t.contiguous()) return cols;
  CHECK_EQ(t.dim(-1), cols) << what << ": a column view's rows must hold " << cols << " values";
  return t.row_stride();
}

Tensor Tensor::Columns(int64_t begin, int64_t end) const {
  CHECK(rank() == 2 && 0 <= begin && begin <= end && end <= shape_[1])
      << "Columns(" << begin << ", " << end << ") of " << ShapeString(shape_);
  Tensor t = *this;
  t.offset_ += begin * DTypeSize(dtype_);
  t.shape_[1] = end - begin;
  t.row_stride_ = end - begin == shape_[1] || end == begin ? row_stride_ : row_stride();
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t = Empty(shape_, dtype_, device_);
  t.CopyFrom(*this);
  return t;
}

void Tensor::CopyFrom(const Tensor& src) const {
  CHECK(src.dtype_ == dtype_ && src.numel() == numel())
      << ShapeString(src.shape_) << " " << DTypeName(src.dtype_) << " -> " << ShapeString(shape_)
      << " " << DTypeName(dtype_);
  if (device_ == Device::kCPU && src.device_ == Device::kCPU) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
#ifdef GDN_WITH_CUDA
  if (device_ == Device::kCPU) {
    cuda::CopyDeviceToHost(raw(), src.raw(), nbytes());
  } else if (src.device_ == Device::kCPU) {
    cuda::CopyHostToDevice(raw(), src.raw(), nbytes());
  } else {
    cuda::CopyDeviceToDevice(raw(), src.raw(), nbytes());
  }
#endif
}

void Tensor::SetZero() const {
  if (contiguous()) {
    if (device_ == Device::kCPU) std::memset(raw(), 0, nbytes());
#ifdef GDN_WITH_CUDA
    else cuda::MemsetZero(raw(), nbytes());
#endif
    return;
  }
  // A column view: rows of dim(-1) values, row_stride() apart.
  const size_t rows = numel() / dim(-1), bytes = dim(-1) * DTypeSize(dtype_);
  const size_t pitch = row_stride() * DTypeSize(dtype_);
  char* p = static_cast<char*>(strided_raw());
  if (device_ == Device::kCPU) {
    for (size_t r = 0; r < rows; ++r) std::memset(p + r * pitch, 0, bytes);
    return;
  }
#ifdef GDN_WITH_CUDA
  cuda::MemsetZero2D(p, pitch, bytes, rows);
#endif
}

Tensor Tensor::To(Device device) const {
  if (device == device_) return *this;
  Tensor t = Empty(shape_, dtype_, device);
  t.CopyFrom(*this);
  return t;
}

Tensor Tensor::To(DType dtype) const {
  CHECK(device_ == Device::kCPU) << "To(DType) converts CPU tensors; copy with To(Device::kCPU)";
  Tensor t = Empty(shape_, dtype, device_);
  for (int64_t i = 0; i < numel(); ++i) t.set(i, at(i));
  return t;
}

int64_t Tensor::MemoryIndex(int64_t i) const {
  return contiguous() ? i : i / dim(-1) * row_stride_ + i % dim(-1);
}

double Tensor::at(int64_t i) const {
  CHECK(device_ == Device::kCPU) << "at() reads CPU tensors only; copy with To(Device::kCPU)";
  i = MemoryIndex(i);
  switch (dtype_) {
    case DType::kF32: return strided_data<float>()[i];
    case DType::kF64: return strided_data<double>()[i];
    case DType::kI32: return strided_data<int32_t>()[i];
    case DType::kBF16: {
      const uint32_t bits = uint32_t{static_cast<const uint16_t*>(strided_raw())[i]} << 16;
      float x;
      std::memcpy(&x, &bits, 4);
      return x;
    }
  }
  return 0;
}

void Tensor::set(int64_t i, double value) const {
  CHECK(device_ == Device::kCPU) << "set() writes CPU tensors only; copy with To(Device::kCPU)";
  i = MemoryIndex(i);
  switch (dtype_) {
    case DType::kF32: strided_data<float>()[i] = static_cast<float>(value); break;
    case DType::kF64: strided_data<double>()[i] = value; break;
    case DType::kI32: strided_data<int32_t>()[i] = static_cast<int32_t>(value); break;
    case DType::kBF16: {  // round to nearest even, as the GPU's conversion (finite values)
      const float x = static_cast<float>(value);
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      bits += 0x7fff + ((bits >> 16) & 1);
      static_cast<uint16_t*>(strided_raw())[i] = static_cast<uint16_t>(bits >> 16);
      break;
    }
  }
}

}  // namespace gdn
