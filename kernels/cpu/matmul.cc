// Matrix products on the CPU: OpenBLAS sgemm / dgemm (row-major).
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

void Matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            double alpha, double beta) {
  CHECK(a.rank() == 2 && b.rank() == 2 && c.rank() == 2);
  CHECK(a.dtype() == b.dtype() && a.dtype() == c.dtype());
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  CHECK(k == kb && c.dim(0) == m && c.dim(1) == n)
      << "matmul " << ShapeString(a.shape()) << (trans_a ? "^T" : "") << " x "
      << ShapeString(b.shape()) << (trans_b ? "^T" : "") << " -> " << ShapeString(c.shape());
  if (m == 0 || n == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if (a.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, static_cast<float>(alpha), a.data<float>(),
                a.dim(1), b.data<float>(), b.dim(1), static_cast<float>(beta), c.data<float>(),
                n);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a.data<double>(), a.dim(1),
                b.data<double>(), b.dim(1), beta, c.data<double>(), n);
  }
}

}  // namespace gdn::cpu
