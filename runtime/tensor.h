// Tensor: a typed, shaped view of device memory. Dense and row-major: contiguous, or a column view
// (Columns) whose rows of the last dimension lie row_stride() elements apart.
// The model code is written against Tensor and kernels/ops.h only, so the same code runs in
// float32 (training), float64 (gradient checks) and, with the CUDA device, on a GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "glog/logging.h"

namespace gdn {

// kBF16 exists on CUDA in the bf16 mode only: matrix-product operands (ops::MatmulOperand, the
// [operand] outputs of kernels/op_set.inc) and activations kept for elementwise ops (its [stored]
// inputs); no other op takes it.
enum class DType { kF32, kF64, kI32, kBF16 };
enum class Device { kCPU, kCUDA };

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);
const char* DeviceName(Device device);

template <typename T>
constexpr DType DTypeOf();
template <>
constexpr DType DTypeOf<float>() { return DType::kF32; }
template <>
constexpr DType DTypeOf<double>() { return DType::kF64; }
template <>
constexpr DType DTypeOf<int32_t>() { return DType::kI32; }

using Shape = std::vector<int64_t>;

// Host (and, with CUDA, device) memory freed by tensors is cached for reuse (see tensor.cc); this
// returns it to the system (e.g. between the runs of a sweep) and says how many bytes were released.
size_t ReleaseCachedMemory();
// When an allocation fails even with the caches given back: one line on stderr and exit status 1
// (memory ran out mid-run, what the start's check in launcher/trainer.h cannot foresee; the run's
// checkpoints stay as they are). `memory`: "host" or "GPU"; in_use: bytes held by tensors.
[[noreturn]] void ExitOutOfMemory(const char* memory, size_t bytes, size_t in_use);
int64_t NumElements(const Shape& shape);
std::string ShapeString(const Shape& shape);

// A Tensor is a handle (like a shared_ptr): `const` protects the handle, not the values.
class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory; Zeros() for zero-filled.
  static Tensor Empty(const Shape& shape, DType dtype, Device device = Device::kCPU);
  static Tensor Zeros(const Shape& shape, DType dtype, Device device = Device::kCPU);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return numel() * DTypeSize(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // The first element, for code that reads the tensor as contiguous (a column view fails here).
  template <typename T>
  T* data() const {
    CHECK(DTypeOf<T>() == dtype_) << "tensor is " << DTypeName(dtype_);
    return static_cast<T*>(raw());
  }
  void* raw() const {
    CHECK(contiguous()) << "a column view " << ShapeString(shape_) << " (row stride "
                        << row_stride_ << ") passed to code that takes contiguous tensors only";
    return strided_raw();
  }
  // Column views: rows of the last dimension row_stride() elements apart (its size when
  // contiguous). Only ops that say they take column views read them, through strided_data().
  bool contiguous() const { return row_stride_ == 0; }
  int64_t row_stride() const { return row_stride_ != 0 ? row_stride_ : (rank() ? dim(-1) : 1); }
  template <typename T>
  T* strided_data() const {
    CHECK(DTypeOf<T>() == dtype_) << "tensor is " << DTypeName(dtype_);
    return static_cast<T*>(strided_raw());
  }
  void* strided_raw() const { return static_cast<char*>(storage_.get()) + offset_; }

  // The same memory with another shape of the same element count (a column view keeps its last
  // dimension).
  Tensor View(const Shape& shape) const;
  // Rows [begin, end) along dimension 0, sharing memory.
  Tensor Rows(int64_t begin, int64_t end) const;
  // Columns [begin, end) of a 2-D tensor, sharing memory: a column view unless that is all of
  // them.
  Tensor Columns(int64_t begin, int64_t end) const;
  // A deep copy.
  Tensor Clone() const;
  // Copies the values of src (same element count and dtype) into this tensor, across devices too.
  void CopyFrom(const Tensor& src) const;
  void SetZero() const;  // column views too
  // Converts to another dtype (CPU), e.g. float32 parameters into a float64 model for checks.
  Tensor To(DType dtype) const;
  // A copy on another device (this tensor itself when it is already there).
  Tensor To(Device device) const;

  // Element access for tests and small host-side work (CPU tensors only; copy a device tensor
  // with To(Device::kCPU) first): element i of the flat view (row-major over the shape, column
  // views too), converted to double.
  double at(int64_t i) const;
  void set(int64_t i, double value) const;

 private:
  int64_t MemoryIndex(int64_t i) const;  // element i of the flat view, from strided_data()

  std::shared_ptr<void> storage_;
  size_t offset_ = 0;
  Shape shape_;
  int64_t row_stride_ = 0;  // 0: contiguous
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// For an op that takes a column view with rows of `cols` values: the stride between its rows
// (cols when t is contiguous, whatever its shape). Fails when a column view's rows are not `cols`.
int64_t RowStride(const Tensor& t, int64_t cols, const char* what);

}  // namespace gdn
