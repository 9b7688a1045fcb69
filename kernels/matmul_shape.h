// The sizes of c = op(a) op(b), checked once for every backend's Matmul.
#pragma once

#include "glog/logging.h"
#include "runtime/tensor.h"

namespace gdn {

struct MatmulShape {
  int64_t m, n, k;  // c is [m, n]; the product sums over k
};

inline MatmulShape CheckMatmulShape(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                                    const Tensor& c) {
  CHECK(a.rank() == 2 && b.rank() == 2 && c.rank() == 2);
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  CHECK(k == kb && c.dim(0) == m && c.dim(1) == n)
      << "matmul " << ShapeString(a.shape()) << (trans_a ? "^T" : "") << " x "
      << ShapeString(b.shape()) << (trans_b ? "^T" : "") << " -> " << ShapeString(c.shape());
  return {m, n, k};
}

}  // namespace gdn
