// The pieces table of the multi-tensor optimizer updates (AdamWUpdatePieces, SgdUpdatePieces in
// kernels/op_set.inc), read and checked once for every backend.
#pragma once

#include <vector>

#include "glog/logging.h"
#include "runtime/tensor.h"

namespace gdn {

struct UpdatePiece {
  int64_t p_offset, state_offset, length;
  double lr, weight_decay;
};

// The rows of `pieces` (CPU float64 [k, 5]); every piece must lie inside p (flat, as g) and state.
inline std::vector<UpdatePiece> ReadUpdatePieces(const Tensor& pieces, const Tensor& p,
                                                 const Tensor& g, const Tensor& state,
                                                 const char* op) {
  CHECK(pieces.device() == Device::kCPU && pieces.dtype() == DType::kF64 && pieces.rank() == 2 &&
        pieces.dim(1) == 5)
      << op << ": pieces must be a CPU float64 [k, 5] table";
  CHECK(p.rank() == 1 && g.rank() == 1 && state.rank() == 1 && p.numel() == g.numel())
      << op << ": flat p and g of one size and a flat state";
  std::vector<UpdatePiece> out;
  const double* t = pieces.data<double>();
  for (int64_t i = 0; i < pieces.dim(0); ++i, t += 5) {
    const UpdatePiece u{static_cast<int64_t>(t[0]), static_cast<int64_t>(t[1]),
                        static_cast<int64_t>(t[2]), t[3], t[4]};
    CHECK(u.p_offset >= 0 && u.state_offset >= 0 && u.length >= 0 &&
          u.p_offset + u.length <= p.numel() && u.state_offset + u.length <= state.numel())
        << op << ": piece " << i << " lies outside the tensors";
    out.push_back(u);
  }
  return out;
}

}  // namespace gdn
