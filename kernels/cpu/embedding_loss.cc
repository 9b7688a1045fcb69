// Token embedding and the cross-entropy loss (softmax fused with its gradient, so the logits'
// buffer can be reused for dlogits and full-size probabilities are never stored).
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

void EmbeddingForward(const Tensor& tokens, const Tensor& table, double scale, const Tensor& out) {
  const int64_t n = tokens.numel(), vocab = table.dim(0), d = table.dim(1);
  CHECK_EQ(out.numel(), n * d);
  const int32_t* tok = tokens.data<int32_t>();
  DispatchFloat(table.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pt = table.data<T>();
    T* po = out.data<T>();
    const T s = static_cast<T>(scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      CHECK(tok[i] >= 0 && tok[i] < vocab) << "token " << tok[i] << " outside vocabulary " << vocab;
      const T* row = pt + static_cast<int64_t>(tok[i]) * d;
      for (int64_t j = 0; j < d; ++j) po[i * d + j] = s * row[j];
    }
  });
}

void EmbeddingBackward(const Tensor& tokens, const Tensor& dout, double scale,
                       const Tensor& dtable) {
  const int64_t n = tokens.numel(), d = dtable.dim(1);
  const int32_t* tok = tokens.data<int32_t>();
  DispatchFloat(dtable.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pd = dout.data<T>();
    T* pt = dtable.data<T>();
    const T s = static_cast<T>(scale);
    // Columns in parallel: repeated tokens then never race on a row.
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < n; ++i) pt[static_cast<int64_t>(tok[i]) * d + j] += s * pd[i * d + j];
  });
}

double CrossEntropy(const Tensor& logits, const Tensor& targets, const Tensor& dlogits,
                    double grad_scale) {
  const int64_t n = targets.numel(), vocab = logits.dim(-1);
  CHECK_EQ(logits.numel(), n * vocab);
  const int32_t* tgt = targets.data<int32_t>();
  double total = 0;
  DispatchFloat(logits.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pl = logits.data<T>();
    T* pd = dlogits.defined() ? dlogits.data<T>() : nullptr;
    const T gscale = static_cast<T>(grad_scale / n);
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* row = pl + i * vocab;
      CHECK(tgt[i] >= 0 && tgt[i] < vocab) << "target " << tgt[i] << " outside vocabulary";
      T mx = row[0];
      for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
      T z = 0;
      for (int64_t j = 0; j < vocab; ++j) z += std::exp(row[j] - mx);
      const T lse = mx + std::log(z);
      sum += static_cast<double>(lse - row[tgt[i]]);
      if (pd) {
        T* drow = pd + i * vocab;
        const T target_logit = row[tgt[i]];
        for (int64_t j = 0; j < vocab; ++j) drow[j] = std::exp(row[j] - lse) * gscale;
        drow[tgt[i]] = (std::exp(target_logit - lse) - T(1)) * gscale;
      }
    }
    total = sum;
  });
  return total / n;
}

}  // namespace gdn::cpu
