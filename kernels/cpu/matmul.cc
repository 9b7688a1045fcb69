// Matrix products on the CPU: OpenBLAS sgemm / dgemm (row-major).
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/matmul_shape.h"

namespace gdn::cpu {

void Matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            double alpha, double beta) {
  const auto [m, n, k] = CheckMatmulShape(a, trans_a, b, trans_b, c);
  CHECK(a.dtype() == b.dtype() && a.dtype() == c.dtype());
  if (m == 0 || n == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  // a and b may be column views: their row strides are the leading dimensions.
  if (a.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, static_cast<float>(alpha),
                a.strided_data<float>(), a.row_stride(), b.strided_data<float>(), b.row_stride(),
                static_cast<float>(beta), c.data<float>(), n);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a.strided_data<double>(), a.row_stride(),
                b.strided_data<double>(), b.row_stride(), beta, c.data<double>(), n);
  }
}

}  // namespace gdn::cpu
