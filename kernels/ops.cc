// The device-dispatching front of the op set: each op runs on the device of its first tensor,
// timed per op name when profiling is on (gdn bench prints the breakdown).
// Only the CPU backend exists so far; a CUDA backend adds `if (OnCuda(x)) return cuda::Op(...)`.
#include "kernels/ops.h"

#include <chrono>

#include "kernels/cpu/cpu_ops.h"

namespace gdn::ops {

namespace {
bool profiling = false;
std::map<std::string, OpTime> profile;

class ScopedOpTimer {
 public:
  explicit ScopedOpTimer(const char* name) : name_(profiling ? name : nullptr) {
    if (name_) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedOpTimer() {
    if (!name_) return;
    OpTime& t = profile[name_];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    ++t.calls;
  }

 private:
  const char* name_;
  std::chrono::steady_clock::time_point start_;
};

const Tensor& OnCpu(const Tensor& t) {
  CHECK(t.device() == Device::kCPU) << "this build has no kernels for the tensor's device";
  return t;
}
}  // namespace

void EnableProfiling(bool on) { profiling = on; }

std::map<std::string, OpTime> TakeProfile() {
  std::map<std::string, OpTime> p;
  p.swap(profile);
  return p;
}

void Matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, double alpha, double beta) {
  ScopedOpTimer timer("Matmul");
  OnCpu(a);
  return cpu::Matmul(a, trans_a, b, trans_b, c, alpha, beta);
}

void Fill(const Tensor& x, double value) {
  ScopedOpTimer timer("Fill");
  OnCpu(x);
  return cpu::Fill(x, value);
}

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  ScopedOpTimer timer("Add");
  OnCpu(a);
  return cpu::Add(a, b, out);
}

void Axpy(double alpha, const Tensor& x, const Tensor& y) {
  ScopedOpTimer timer("Axpy");
  OnCpu(x);
  return cpu::Axpy(alpha, x, y);
}

void Scale(const Tensor& x, double alpha) {
  ScopedOpTimer timer("Scale");
  OnCpu(x);
  return cpu::Scale(x, alpha);
}

double SumSquares(const Tensor& x) {
  ScopedOpTimer timer("SumSquares");
  OnCpu(x);
  return cpu::SumSquares(x);
}

double MeanAbs(const Tensor& x) {
  ScopedOpTimer timer("MeanAbs");
  OnCpu(x);
  return cpu::MeanAbs(x);
}

bool AllFinite(const Tensor& x) {
  ScopedOpTimer timer("AllFinite");
  OnCpu(x);
  return cpu::AllFinite(x);
}

void SwigluForward(const Tensor& gate, const Tensor& up, const Tensor& h) {
  ScopedOpTimer timer("SwigluForward");
  OnCpu(gate);
  return cpu::SwigluForward(gate, up, h);
}

void SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dh, const Tensor& dgate, const Tensor& dup) {
  ScopedOpTimer timer("SwigluBackward");
  OnCpu(gate);
  return cpu::SwigluBackward(gate, up, dh, dgate, dup);
}

void RmsNormForward(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) {
  ScopedOpTimer timer("RmsNormForward");
  OnCpu(x);
  return cpu::RmsNormForward(x, w, eps, y, rstd);
}

void RmsNormBackward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx, const Tensor& dw) {
  ScopedOpTimer timer("RmsNormBackward");
  OnCpu(x);
  return cpu::RmsNormBackward(x, w, rstd, dy, dx, dw);
}

void L2NormHeadsForward(const Tensor& x, int64_t head_dim, double eps, const Tensor& y, const Tensor& rnorm) {
  ScopedOpTimer timer("L2NormHeadsForward");
  OnCpu(x);
  return cpu::L2NormHeadsForward(x, head_dim, eps, y, rnorm);
}

void L2NormHeadsBackward(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  ScopedOpTimer timer("L2NormHeadsBackward");
  OnCpu(y);
  return cpu::L2NormHeadsBackward(y, rnorm, dy, dx);
}

void GatedRmsNormForward(const Tensor& o, const Tensor& g, const Tensor& w, int64_t head_dim, double eps, const Tensor& y, const Tensor& rstd) {
  ScopedOpTimer timer("GatedRmsNormForward");
  OnCpu(o);
  return cpu::GatedRmsNormForward(o, g, w, head_dim, eps, y, rstd);
}

void GatedRmsNormBackward(const Tensor& o, const Tensor& g, const Tensor& w, const Tensor& rstd, int64_t head_dim, const Tensor& dy, const Tensor& d_o, const Tensor& dg, const Tensor& dw) {
  ScopedOpTimer timer("GatedRmsNormBackward");
  OnCpu(o);
  return cpu::GatedRmsNormBackward(o, g, w, rstd, head_dim, dy, d_o, dg, dw);
}

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& pre, const Tensor& y) {
  ScopedOpTimer timer("CausalConvSiluForward");
  OnCpu(x);
  return cpu::CausalConvSiluForward(x, w, pre, y);
}

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& pre, const Tensor& dy, const Tensor& dx, const Tensor& dw) {
  ScopedOpTimer timer("CausalConvSiluBackward");
  OnCpu(x);
  return cpu::CausalConvSiluBackward(x, w, pre, dy, dx, dw);
}

void GatesForward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias, double beta_scale, const Tensor& gamma, const Tensor& beta) {
  ScopedOpTimer timer("GatesForward");
  OnCpu(a);
  return cpu::GatesForward(a, b, a_log, dt_bias, beta_scale, gamma, beta);
}

void GatesBackward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias, double beta_scale, const Tensor& dgamma, const Tensor& dbeta, const Tensor& da, const Tensor& db, const Tensor& da_log, const Tensor& ddt_bias) {
  ScopedOpTimer timer("GatesBackward");
  OnCpu(a);
  return cpu::GatesBackward(a, b, a_log, dt_bias, beta_scale, dgamma, dbeta, da, db, da_log, ddt_bias);
}

void GatedDeltaRuleForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk, const Tensor& o, const Tensor& final_state) {
  ScopedOpTimer timer("GatedDeltaRuleForward");
  OnCpu(q);
  return cpu::GatedDeltaRuleForward(q, k, v, gamma, beta, scale, chunk, o, final_state);
}

void CausalConvSiluStep(const Tensor& x, const Tensor& w, const Tensor& window, const Tensor& y) {
  ScopedOpTimer timer("CausalConvSiluStep");
  OnCpu(x);
  return cpu::CausalConvSiluStep(x, w, window, y);
}

void GatedDeltaRuleStep(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, const Tensor& state, const Tensor& o) {
  ScopedOpTimer timer("GatedDeltaRuleStep");
  OnCpu(q);
  return cpu::GatedDeltaRuleStep(q, k, v, gamma, beta, scale, state, o);
}

void GatedDeltaRuleBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk, const Tensor& d_o, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dgamma, const Tensor& dbeta) {
  ScopedOpTimer timer("GatedDeltaRuleBackward");
  OnCpu(q);
  return cpu::GatedDeltaRuleBackward(q, k, v, gamma, beta, scale, chunk, d_o, dq, dk, dv, dgamma, dbeta);
}

void EmbeddingForward(const Tensor& tokens, const Tensor& table, double scale, const Tensor& out, int64_t vocab_offset) {
  ScopedOpTimer timer("EmbeddingForward");
  OnCpu(tokens);
  return cpu::EmbeddingForward(tokens, table, scale, out, vocab_offset);
}

void EmbeddingBackward(const Tensor& tokens, const Tensor& dout, double scale, const Tensor& dtable, int64_t vocab_offset) {
  ScopedOpTimer timer("EmbeddingBackward");
  OnCpu(tokens);
  return cpu::EmbeddingBackward(tokens, dout, scale, dtable, vocab_offset);
}

double CrossEntropy(const Tensor& logits, const Tensor& targets, const Tensor& dlogits, double grad_scale) {
  ScopedOpTimer timer("CrossEntropy");
  OnCpu(logits);
  return cpu::CrossEntropy(logits, targets, dlogits, grad_scale);
}

void RowMax(const Tensor& logits, const Tensor& row_max) {
  ScopedOpTimer timer("RowMax");
  OnCpu(logits);
  return cpu::RowMax(logits, row_max);
}

void SoftmaxRowStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit) {
  ScopedOpTimer timer("SoftmaxRowStats");
  OnCpu(logits);
  return cpu::SoftmaxRowStats(logits, targets, vocab_offset, row_max, sum_exp, target_logit);
}

double CrossEntropyFromStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit, const Tensor& dlogits, double grad_scale) {
  ScopedOpTimer timer("CrossEntropyFromStats");
  OnCpu(logits);
  return cpu::CrossEntropyFromStats(logits, targets, vocab_offset, row_max, sum_exp, target_logit, dlogits, grad_scale);
}

void AdamWUpdate(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  ScopedOpTimer timer("AdamWUpdate");
  OnCpu(p);
  return cpu::AdamWUpdate(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step);
}

void SgdUpdate(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum, double weight_decay) {
  ScopedOpTimer timer("SgdUpdate");
  OnCpu(p);
  return cpu::SgdUpdate(p, g, buf, lr, momentum, weight_decay);
}

}  // namespace gdn::ops
