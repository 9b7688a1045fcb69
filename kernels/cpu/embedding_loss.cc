// Token embedding and the cross-entropy loss (softmax fused with its gradient, so the logits'
// buffer can be reused for dlogits and full-size probabilities are never stored).
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

void EmbeddingForward(const Tensor& tokens, const Tensor& table, double scale, const Tensor& out,
                      int64_t vocab_offset) {
  const int64_t n = tokens.numel(), rows = table.dim(0), d = table.dim(1);
  CHECK_EQ(out.numel(), n * d);
  const int32_t* tok = tokens.data<int32_t>();
  DispatchFloat(table.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pt = table.data<T>();
    T* po = out.data<T>();
    const T s = static_cast<T>(scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = tok[i] - vocab_offset;
      CHECK(tok[i] >= 0) << "negative token " << tok[i];
      if (r < 0 || r >= rows) {  // another rank's row (the data loader checked the vocabulary)
        for (int64_t j = 0; j < d; ++j) po[i * d + j] = T(0);
        continue;
      }
      const T* row = pt + r * d;
      for (int64_t j = 0; j < d; ++j) po[i * d + j] = s * row[j];
    }
  });
}

void EmbeddingBackward(const Tensor& tokens, const Tensor& dout, double scale,
                       const Tensor& dtable, int64_t vocab_offset) {
  const int64_t n = tokens.numel(), rows = dtable.dim(0), d = dtable.dim(1);
  const int32_t* tok = tokens.data<int32_t>();
  DispatchFloat(dtable.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pd = dout.data<T>();
    T* pt = dtable.data<T>();
    const T s = static_cast<T>(scale);
    // Columns in parallel: repeated tokens then never race on a row.
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = tok[i] - vocab_offset;
        if (r >= 0 && r < rows) pt[r * d + j] += s * pd[i * d + j];
      }
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

void RowMax(const Tensor& logits, const Tensor& row_max) {
  const int64_t n = row_max.numel(), v = logits.numel() / n;
  DispatchFloat(logits.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* pl = logits.data<T>();
    T* pm = row_max.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      T mx = pl[i * v];
      for (int64_t j = 1; j < v; ++j) mx = std::max(mx, pl[i * v + j]);
      pm[i] = mx;
    }
  });
}

void SoftmaxRowStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit) {
  const int64_t n = targets.numel(), v = logits.numel() / n;
  const int32_t* tgt = targets.data<int32_t>();
  DispatchFloat(logits.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pl = logits.data<T>(), *pm = row_max.data<T>();
    T *ps = sum_exp.data<T>(), *pt = target_logit.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      T z = 0;
      for (int64_t j = 0; j < v; ++j) z += std::exp(pl[i * v + j] - pm[i]);
      ps[i] = z;
      const int64_t c = tgt[i] - vocab_offset;
      pt[i] = c >= 0 && c < v ? pl[i * v + c] : T(0);
    }
  });
}

double CrossEntropyFromStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                             const Tensor& row_max, const Tensor& sum_exp,
                             const Tensor& target_logit, const Tensor& dlogits,
                             double grad_scale) {
  const int64_t n = targets.numel(), v = logits.numel() / n;
  const int32_t* tgt = targets.data<int32_t>();
  double total = 0;
  DispatchFloat(logits.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pl = logits.data<T>(), *pm = row_max.data<T>(), *ps = sum_exp.data<T>(),
            *pt = target_logit.data<T>();
    T* pd = dlogits.defined() ? dlogits.data<T>() : nullptr;
    const T gscale = static_cast<T>(grad_scale / n);
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T lse = pm[i] + std::log(ps[i]);
      sum += static_cast<double>(lse - pt[i]);
      if (!pd) continue;
      for (int64_t j = 0; j < v; ++j) pd[i * v + j] = std::exp(pl[i * v + j] - lse) * gscale;
      const int64_t c = tgt[i] - vocab_offset;
      if (c >= 0 && c < v) pd[i * v + c] -= gscale;
    }
    total = sum;
  });
  return total / n;
}

}  // namespace gdn::cpu
