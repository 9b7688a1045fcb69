// The device-dispatching front of the op set: each op runs on the device of its first tensor,
// timed per op name when profiling is on (gdn bench prints the breakdown).
// Built with CUDA (GDN_WITH_CUDA), ops on CUDA tensors go to kernels/cuda/.
#include "kernels/ops.h"

#include <chrono>

#include "kernels/cpu/cpu_ops.h"
#ifdef GDN_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#include "runtime/cuda_device.h"
#endif

namespace gdn::ops {

namespace {
bool profiling = false;
std::map<std::string, OpTime> profile;

// GPU ops run asynchronously: while profiling, the timer waits for the device before and after
// an op on a CUDA tensor, so the time is the op's own.
class ScopedOpTimer {
 public:
  ScopedOpTimer(const char* name, const Tensor& first)
      : name_(profiling ? name : nullptr), cuda_(first.device() == Device::kCUDA) {
    if (!name_) return;
    Sync();
    start_ = std::chrono::steady_clock::now();
  }
  ~ScopedOpTimer() {
    if (!name_) return;
    Sync();
    OpTime& t = profile[name_];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    ++t.calls;
  }

 private:
  void Sync() const {
#ifdef GDN_WITH_CUDA
    if (cuda_) cuda::Synchronize();
#endif
  }
  const char* name_;
  bool cuda_;
  std::chrono::steady_clock::time_point start_;
};

#ifdef GDN_WITH_CUDA
#define GDN_DISPATCH(first, op, ...)                                   \
  if ((first).device() == Device::kCUDA) return cuda::op(__VA_ARGS__); \
  return cpu::op(__VA_ARGS__)
#else
#define GDN_DISPATCH(first, op, ...)                                                       \
  CHECK((first).device() == Device::kCPU) << "this build has no kernels for CUDA tensors"; \
  return cpu::op(__VA_ARGS__)
#endif
}  // namespace

void EnableProfiling(bool on) { profiling = on; }

namespace {
MatmulPrecision matmul_precision = MatmulPrecision::kFloat32;
}
void SetMatmulPrecision(MatmulPrecision precision) { matmul_precision = precision; }
MatmulPrecision GetMatmulPrecision() { return matmul_precision; }

DType MatmulOperandType(DType dtype, Device device) {
  return device == Device::kCUDA && dtype == DType::kF32 &&
                 matmul_precision == MatmulPrecision::kBfloat16
             ? DType::kBF16
             : dtype;
}

Tensor MatmulOperand(const Tensor& x) {
#ifdef GDN_WITH_CUDA
  if (MatmulOperandType(x.dtype(), x.device()) != x.dtype()) {
    ScopedOpTimer timer("MatmulOperand", x);
    return cuda::ToBf16(x);
  }
#endif
  return x;
}

Tensor MatmulOperandRows(const std::vector<Tensor>& xs, const std::vector<int64_t>& first_rows,
                         int64_t rows) {
  CHECK(!xs.empty() && xs.size() == first_rows.size());
  const Tensor& first = xs.front();
  int64_t covered = 0, end = 0;  // pieces in order, not overlapping
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    CHECK(x.rank() == 2 && x.dim(1) == first.dim(1) && x.dtype() == first.dtype() &&
          x.device() == first.device() && first_rows[i] >= end && first_rows[i] + x.dim(0) <= rows)
        << "MatmulOperandRows: " << ShapeString(x.shape()) << " " << DTypeName(x.dtype())
        << " at row " << first_rows[i] << " of " << rows << ", among "
        << ShapeString(first.shape()) << " " << DTypeName(first.dtype());
    covered += x.dim(0);
    end = first_rows[i] + x.dim(0);
  }
  ScopedOpTimer timer("MatmulOperand", first);
  const DType type = MatmulOperandType(first.dtype(), first.device());
  const Tensor out = Tensor::Empty({rows, first.dim(1)}, type, first.device());
  if (covered < rows) out.SetZero();  // the rows between pieces
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor part = out.Rows(first_rows[i], first_rows[i] + xs[i].dim(0));
    if (type == xs[i].dtype()) {
      part.CopyFrom(xs[i]);
      continue;
    }
#ifdef GDN_WITH_CUDA
    cuda::ToBf16(xs[i], part);
#endif
  }
  return out;
}

void CopyToMatmulOperands(const std::vector<Tensor>& xs, const std::vector<Tensor>& operands) {
  CHECK_EQ(xs.size(), operands.size());
  if (xs.empty()) return;
  ScopedOpTimer timer("MatmulOperand", xs.front());
  std::vector<Tensor> round_in, round_out;
  for (size_t i = 0; i < xs.size(); ++i) {
    CHECK(xs[i].shape() == operands[i].shape() &&
          operands[i].dtype() == MatmulOperandType(xs[i].dtype(), xs[i].device()))
        << "CopyToMatmulOperands: " << ShapeString(operands[i].shape()) << " "
        << DTypeName(operands[i].dtype()) << " for " << ShapeString(xs[i].shape()) << " "
        << DTypeName(xs[i].dtype());
    if (operands[i].dtype() == xs[i].dtype()) {
      operands[i].CopyFrom(xs[i]);
    } else {
      round_in.push_back(xs[i]);
      round_out.push_back(operands[i]);
    }
  }
#ifdef GDN_WITH_CUDA
  if (!round_in.empty()) cuda::ToBf16Pieces(round_in, round_out);
#endif
}

std::map<std::string, OpTime> TakeProfile() {
  std::map<std::string, OpTime> p;
  p.swap(profile);
  return p;
}

void Matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, double alpha, double beta) {
  ScopedOpTimer timer("Matmul", a);
  GDN_DISPATCH(a, Matmul, a, trans_a, b, trans_b, c, alpha, beta);
}

void Fill(const Tensor& x, double value) {
  ScopedOpTimer timer("Fill", x);
  GDN_DISPATCH(x, Fill, x, value);
}

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  ScopedOpTimer timer("Add", a);
  GDN_DISPATCH(a, Add, a, b, out);
}

void Axpy(double alpha, const Tensor& x, const Tensor& y) {
  ScopedOpTimer timer("Axpy", x);
  GDN_DISPATCH(x, Axpy, alpha, x, y);
}

void Scale(const Tensor& x, double alpha) {
  ScopedOpTimer timer("Scale", x);
  GDN_DISPATCH(x, Scale, x, alpha);
}

double SumSquares(const Tensor& x) {
  ScopedOpTimer timer("SumSquares", x);
  GDN_DISPATCH(x, SumSquares, x);
}

double MeanAbs(const Tensor& x) {
  ScopedOpTimer timer("MeanAbs", x);
  GDN_DISPATCH(x, MeanAbs, x);
}

bool AllFinite(const Tensor& x) {
  ScopedOpTimer timer("AllFinite", x);
  GDN_DISPATCH(x, AllFinite, x);
}

void SwigluForward(const Tensor& gate, const Tensor& up, const Tensor& h) {
  ScopedOpTimer timer("SwigluForward", gate);
  GDN_DISPATCH(gate, SwigluForward, gate, up, h);
}

void SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dh, const Tensor& dgate, const Tensor& dup, const Tensor& h) {
  ScopedOpTimer timer("SwigluBackward", gate);
  GDN_DISPATCH(gate, SwigluBackward, gate, up, dh, dgate, dup, h);
}

void RmsNormForward(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) {
  ScopedOpTimer timer("RmsNormForward", x);
  GDN_DISPATCH(x, RmsNormForward, x, w, eps, y, rstd);
}

void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, double eps, const Tensor& h, const Tensor& y, const Tensor& rstd) {
  ScopedOpTimer timer("AddRmsNormForward", x);
  GDN_DISPATCH(x, AddRmsNormForward, x, r, w, eps, h, y, rstd);
}

void RmsNormBackward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx, const Tensor& dw, bool accumulate, const Tensor& dx_operand) {
  ScopedOpTimer timer("RmsNormBackward", x);
  GDN_DISPATCH(x, RmsNormBackward, x, w, rstd, dy, dx, dw, accumulate, dx_operand);
}

void L2NormHeadsForward(const Tensor& x, int64_t head_dim, double eps, const Tensor& y, const Tensor& rnorm) {
  ScopedOpTimer timer("L2NormHeadsForward", x);
  GDN_DISPATCH(x, L2NormHeadsForward, x, head_dim, eps, y, rnorm);
}

void L2NormHeadsBackward(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  ScopedOpTimer timer("L2NormHeadsBackward", y);
  GDN_DISPATCH(y, L2NormHeadsBackward, y, rnorm, dy, dx);
}

void GatedRmsNormForward(const Tensor& o, const Tensor& g, const Tensor& w, int64_t head_dim, double eps, const Tensor& y, const Tensor& rstd) {
  ScopedOpTimer timer("GatedRmsNormForward", o);
  GDN_DISPATCH(o, GatedRmsNormForward, o, g, w, head_dim, eps, y, rstd);
}

void GatedRmsNormBackward(const Tensor& o, const Tensor& g, const Tensor& w, const Tensor& rstd, int64_t head_dim, const Tensor& dy, const Tensor& d_o, const Tensor& dg, const Tensor& dw, const Tensor& y) {
  ScopedOpTimer timer("GatedRmsNormBackward", o);
  GDN_DISPATCH(o, GatedRmsNormBackward, o, g, w, rstd, head_dim, dy, d_o, dg, dw, y);
}

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& y) {
  ScopedOpTimer timer("CausalConvSiluForward", x);
  GDN_DISPATCH(x, CausalConvSiluForward, x, w, y);
}

void CausalConvSiluL2NormForward(const Tensor& x, const Tensor& w, int64_t head_dim, double eps,
                                 const Tensor& y, const Tensor& rnorm) {
  ScopedOpTimer timer("CausalConvSiluL2NormForward", x);
  GDN_DISPATCH(x, CausalConvSiluL2NormForward, x, w, head_dim, eps, y, rnorm);
}

void CausalConvSiluL2NormBackward(const Tensor& x, const Tensor& w, const Tensor& y,
                                  const Tensor& rnorm, const Tensor& dy, const Tensor& dx,
                                  const Tensor& dw) {
  ScopedOpTimer timer("CausalConvSiluL2NormBackward", x);
  GDN_DISPATCH(x, CausalConvSiluL2NormBackward, x, w, y, rnorm, dy, dx, dw);
}

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx, const Tensor& dw) {
  ScopedOpTimer timer("CausalConvSiluBackward", x);
  GDN_DISPATCH(x, CausalConvSiluBackward, x, w, dy, dx, dw);
}

void GatesForward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias, double beta_scale, const Tensor& gamma, const Tensor& beta) {
  ScopedOpTimer timer("GatesForward", a);
  GDN_DISPATCH(a, GatesForward, a, b, a_log, dt_bias, beta_scale, gamma, beta);
}

void GatesBackward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias, double beta_scale, const Tensor& dgamma, const Tensor& dbeta, const Tensor& da, const Tensor& db, const Tensor& da_log, const Tensor& ddt_bias) {
  ScopedOpTimer timer("GatesBackward", a);
  GDN_DISPATCH(a, GatesBackward, a, b, a_log, dt_bias, beta_scale, dgamma, dbeta, da, db, da_log, ddt_bias);
}

void GatedDeltaRuleForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk, const Tensor& o, const Tensor& final_state, const Tensor& saved) {
  ScopedOpTimer timer("GatedDeltaRuleForward", q);
  GDN_DISPATCH(q, GatedDeltaRuleForward, q, k, v, gamma, beta, scale, chunk, o, final_state, saved);
}

int64_t GatedDeltaRuleSavedFloats(const Tensor& q, const Tensor& v, int64_t chunk) {
  GDN_DISPATCH(q, GatedDeltaRuleSavedFloats, q, v, chunk);
}

void CausalConvSiluStep(const Tensor& x, const Tensor& w, const Tensor& window, const Tensor& y) {
  ScopedOpTimer timer("CausalConvSiluStep", x);
  CHECK(x.device() == Device::kCPU) << "CausalConvSiluStep: decoding runs on the CPU (no CUDA kernel yet)";
  return cpu::CausalConvSiluStep(x, w, window, y);
}

void GatedDeltaRuleStep(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, const Tensor& state, const Tensor& o) {
  ScopedOpTimer timer("GatedDeltaRuleStep", q);
  CHECK(q.device() == Device::kCPU) << "GatedDeltaRuleStep: decoding runs on the CPU (no CUDA kernel yet)";
  return cpu::GatedDeltaRuleStep(q, k, v, gamma, beta, scale, state, o);
}

void GatedDeltaRuleBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk, const Tensor& d_o, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dgamma, const Tensor& dbeta, const Tensor& saved) {
  ScopedOpTimer timer("GatedDeltaRuleBackward", q);
  GDN_DISPATCH(q, GatedDeltaRuleBackward, q, k, v, gamma, beta, scale, chunk, d_o, dq, dk, dv, dgamma, dbeta, saved);
}

void EmbeddingForward(const Tensor& tokens, const Tensor& table, double scale, const Tensor& out, int64_t vocab_offset) {
  ScopedOpTimer timer("EmbeddingForward", tokens);
  GDN_DISPATCH(tokens, EmbeddingForward, tokens, table, scale, out, vocab_offset);
}

void EmbeddingBackward(const Tensor& tokens, const Tensor& dout, double scale, const Tensor& dtable, int64_t vocab_offset) {
  ScopedOpTimer timer("EmbeddingBackward", tokens);
  GDN_DISPATCH(tokens, EmbeddingBackward, tokens, dout, scale, dtable, vocab_offset);
}

double CrossEntropy(const Tensor& logits, const Tensor& targets, const Tensor& dlogits, double grad_scale) {
  ScopedOpTimer timer("CrossEntropy", logits);
  GDN_DISPATCH(logits, CrossEntropy, logits, targets, dlogits, grad_scale);
}

void RowMax(const Tensor& logits, const Tensor& row_max) {
  ScopedOpTimer timer("RowMax", logits);
  GDN_DISPATCH(logits, RowMax, logits, row_max);
}

void SoftmaxRowStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit) {
  ScopedOpTimer timer("SoftmaxRowStats", logits);
  GDN_DISPATCH(logits, SoftmaxRowStats, logits, targets, vocab_offset, row_max, sum_exp, target_logit);
}

double CrossEntropyFromStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit, const Tensor& dlogits, double grad_scale) {
  ScopedOpTimer timer("CrossEntropyFromStats", logits);
  GDN_DISPATCH(logits, CrossEntropyFromStats, logits, targets, vocab_offset, row_max, sum_exp, target_logit, dlogits, grad_scale);
}

void AdamWUpdate(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  ScopedOpTimer timer("AdamWUpdate", p);
  GDN_DISPATCH(p, AdamWUpdate, p, g, m, v, lr, beta1, beta2, eps, weight_decay, step);
}

void SgdUpdate(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum, double weight_decay) {
  ScopedOpTimer timer("SgdUpdate", p);
  GDN_DISPATCH(p, SgdUpdate, p, g, buf, lr, momentum, weight_decay);
}

void AdamWUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                       const Tensor& pieces, double beta1, double beta2, double eps, int64_t step,
                       double grad_scale) {
  ScopedOpTimer timer("AdamWUpdatePieces", p);
  GDN_DISPATCH(p, AdamWUpdatePieces, p, g, m, v, pieces, beta1, beta2, eps, step, grad_scale);
}

void SgdUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& buf, const Tensor& pieces,
                     double momentum, double grad_scale) {
  ScopedOpTimer timer("SgdUpdatePieces", p);
  GDN_DISPATCH(p, SgdUpdatePieces, p, g, buf, pieces, momentum, grad_scale);
}

}  // namespace gdn::ops
