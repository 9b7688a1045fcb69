// The op set: every computation the model performs, on Tensors, whatever their device.
// kernels/cpu/ implements it for float32 and float64 (the reference, tests, gradient checks);
// kernels/cuda/ implements the same functions for GPUs. ops.cc picks the implementation from
// the tensors' device, so the model code never names a device.
//
// Conventions: activations are [N, features] with N = batch * time (row-major); weights are
// [out, in] as in a torch Linear, so y = x W^T. Parameter gradients ACCUMULATE (+=) so that
// micro-batches and tied weights add up; activation gradients are overwritten.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace gdn::ops {
#include "kernels/op_set.inc"

// Per-op wall time, collected while profiling is on (off by default; costs a clock read per op).
struct OpTime {
  double seconds = 0;
  int64_t calls = 0;
};
void EnableProfiling(bool on);

// How matrix products on CUDA tensors compute (process-wide, like torch's matmul precision):
// kFloat32: float32 FMA (matches the CPU to float32 rounding); kBfloat16: bf16 tensor cores with
// float32 accumulation, the float32 inputs rounded to bf16 first; the chunked gated delta rule's
// block products then also run on the tensor cores (operands split in two bf16 parts, about 2e-5
// relative). The CPU always computes in float32.
enum class MatmulPrecision { kFloat32, kBfloat16 };
void SetMatmulPrecision(MatmulPrecision precision);
MatmulPrecision GetMatmulPrecision();
// x in the form matrix products take it: in the bf16 mode on CUDA a bf16 copy (DType::kBF16),
// otherwise x itself. Matmul rounds float32 operands on every call; an operand used by several
// products (a layer input feeding many projections, an output gradient feeding dW and dx, a
// saved activation) is rounded once this way, and kept in half the memory.
Tensor MatmulOperand(const Tensor& x);
// The 2-D tensors xs (the same number of columns) stacked by rows, in MatmulOperand's form: one
// operand for a product over several weights at once (the mixer's input gradient). xs[i] goes to
// rows [first_rows[i], + its rows) of the result's `rows`; rows no x covers are zero.
Tensor MatmulOperandRows(const std::vector<Tensor>& xs, const std::vector<int64_t>& first_rows,
                         int64_t rows);
// Copies each xs[i] into operands[i], a tensor of its shape in MatmulOperand's form (kept copies
// of weights, refreshed once each forward: ParameterSet::RoundOperands): bf16 copies are rounded
// in one launch on CUDA.
void CopyToMatmulOperands(const std::vector<Tensor>& xs, const std::vector<Tensor>& operands);
// The dtype MatmulOperand gives a tensor of this dtype on this device. Ops whose output feeds
// products only take an output of this dtype on CUDA and write it rounded (op_set.inc says which).
DType MatmulOperandType(DType dtype, Device device);
// The times collected since the last call, by op name.
std::map<std::string, OpTime> TakeProfile();
}  // namespace gdn::ops
