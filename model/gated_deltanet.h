// The Gated DeltaNet mixer (shared/docs/gated-delta-rule.md), forward and backward side by side.
//   q,k,v,a,b,g = W x;  q,k,v <- SiLU(causal conv);  q,k <- L2 norm per head;
//   gamma = -exp(A_log) softplus(a + dt_bias);  beta = sigmoid(b) (x2 with negative eigenvalues);
//   o = gated delta rule(q, k, v, gamma, beta, scale dk^-1/2);
//   y = RMSNorm_head(o) * w_norm * SiLU(g);  out = Wo y
// Tensor parallel: each rank owns a contiguous group of key heads with their value heads, i.e.
// the matching rows of Wq..Wg (column parallel), conv channels, A_log, dt_bias; Wo is row
// parallel, so `out` is this rank's partial sum (the caller reduces it over the group).
#pragma once

#include <vector>

#include "model/layer.h"

namespace gdn {

class GatedDeltaNetMixer {
 public:
  GatedDeltaNetMixer(const std::string& prefix, const LayerBuilder& builder);

  // x: [B*T, d] -> out [B*T, d]. Saves what the backward needs; with save_recurrence also the
  // recurrence's intermediates, where its kernel has them (ops::GatedDeltaRuleSavedFloats: the
  // CUDA chunked kernel's chunk states, V' and T, 0.33 GB a layer for the reference model), so
  // that its backward does not compute them again.
  Tensor Forward(const Tensor& x, int64_t B, int64_t T, Probes* probes,
                 bool save_recurrence = false);
  // dout: [B*T, d] -> dx; accumulates parameter gradients.
  Tensor Backward(const Tensor& dout);
  // Drops the activations Forward saved (once the backward is done; with activation
  // recomputation Forward runs again before Backward).
  void ReleaseSaved();

  // Incremental decoding: what the mixer carries from one token to the next.
  struct State {
    Tensor q_window, k_window, v_window;  // the last conv_size - 1 conv inputs [B, K-1, C]
    Tensor recurrent;                     // S [B, HV, dk, dv]
  };
  // Zero state (the start of a sequence) for B sequences.
  State NewState(int64_t B) const;
  // x: [B, d], the next token of each sequence -> out [B, d] (this rank's partial sum, as
  // Forward); advances `state`. A run of steps equals Forward over the whole sequence.
  Tensor ForwardStep(const Tensor& x, State& state) const;

 private:
  LayerBuilder b_;
  int64_t heads_, value_heads_, key_dim_, value_dim_;  // this rank's share
  double recurrence_scale_;  // on q: RecurrenceScale (model/parametrization.h)
  Parameter *wq_, *wk_, *wv_, *wa_, *wb_, *wg_, *conv_q_, *conv_k_, *conv_v_, *a_log_, *dt_bias_,
      *o_norm_, *wo_;
  // The gated delta rule's q, k, v from the saved projections: the conv outputs, q and k L2-normed
  // per head (with their reciprocal norms for the backward). The forward keeps them for the
  // backward (in_): 6 KB a token a layer at the reference model's sizes in the bf16 mode, 12 KB
  // in float32. Making them again in the backward took 1.7 ms a step (H200, reference model).
  struct RecurrenceInputs {
    Tensor qn, kn, vc, q_rn, k_rn;
  };
  RecurrenceInputs MakeRecurrenceInputs(Probes* probes) const;
  // A [B_ * T_, columns] tensor (or column view) as [B_, T_, columns]: the conv's layout.
  Tensor BySequence(const Tensor& t) const;
  // The six input projections run as one product: their outputs (and, in the backward, their
  // output gradients) are columns of one buffer [N, stride], in this order, each starting at a
  // multiple of 8 columns (16-byte aligned); the gaps between them are zeros (products read
  // them), the columns past `width` are never read. The stride is a multiple of 64: cuBLAS chose
  // slower kernels for products reading columns of a buffer of 4624 (weight gradients of 768 and
  // 1536 rows: 63 and 106 us against 49 and 77 at 4672, H200).
  struct ProjectionColumns {
    std::vector<Parameter*> weights;  // q, k, v, g, a, b
    std::vector<int64_t> first;             // each one's first column
    int64_t width = 0, stride = 0;
    int64_t end(size_t i) const { return first[i] + weights[i]->value.dim(0); }
    // Each projection's columns of `buffer` ([N, stride] or a view of its first `width` columns).
    std::vector<Tensor> Of(const Tensor& buffer) const;
  };
  ProjectionColumns Projections() const;
  // The six weights stacked by rows at their columns' places, zero rows elsewhere ([stride, d]),
  // in the products' operand form: stacked_operand_ where the weights keep bf16 copies.
  Tensor StackedProjectionWeights(const ProjectionColumns& p) const;
  // In the bf16 mode on CUDA: the six weights' kept bf16 copies (Parameter::operand) are its rows,
  // so the stacked operand is made once each forward by ParameterSet::RoundOperands.
  Tensor stacked_operand_;
  // y = the gated norm of o_ (o_rstd_ written): Wo's input, in Wo's operand form unless float32
  // (probes). Not kept: the norm's backward writes it again for Wo's gradient.
  Tensor OutputNorm(bool float32) const;

  // Saved activations; in the bf16 mode x_ (the projections' operand) and the projections p_
  // (read only by the conv, the gates and the gated norm) are bf16. qp_, kp_, vp_, g_, a_, bb_ are
  // column views of p_.
  int64_t B_ = 0, T_ = 0;
  Tensor x_, p_, qp_, kp_, vp_, a_, bb_, g_, gamma_, beta_, o_, o_rstd_;
  RecurrenceInputs in_;
  Tensor recurrence_saved_;  // with save_recurrence, else undefined
};

}  // namespace gdn
