// The Gated DeltaNet language model: embedding -> depth x [x + Mixer(RMSNorm(x)); x + MLP(RMSNorm(x))]
// -> final RMSNorm -> LM head -> cross-entropy. Forward and backward are explicit, layer by layer.
#pragma once

#include <memory>
#include <vector>

#include "model/gated_deltanet.h"
#include "model/gradient_reducer.h"
#include "model/mlp.h"

namespace gdn {

class LanguageModel {
 public:
  // `spec` must have passed ValidateSpec and ValidateModelSpec. Under tensor parallelism every
  // rank of the group builds the model with its TensorParallel place and the group's communicator.
  LanguageModel(const ExperimentSpec& spec, DType dtype, TensorParallel tp = {},
                Communicator* tp_comm = nullptr, Device device = Device::kCPU);

  const ModelDims& dims() const { return builder_.dims; }
  ParameterSet& params() { return params_; }
  // Draws every parameter from `seed` (layout independent; see model/parameter.h).
  void Initialize(uint64_t seed);

  // tokens: int32 [B, T + 1]; inputs are tokens[:, :-1], targets tokens[:, 1:]. Returns the mean
  // next-token loss; parameter gradients accumulate grad_scale * d(loss). With `reducer` (the
  // step's last micro-batch) each parameter is reported to it as soon as its gradient is final, so
  // the reduction overlaps the rest of the backward; GradientReducer::Finish completes it.
  double ForwardBackward(const Tensor& tokens, double grad_scale = 1.0,
                         GradientReducer* reducer = nullptr);
  // The mean loss only (no gradients). probes, when given, receive mean |coordinate| of each
  // module's output (summed over layers for per-layer modules) and the recurrent state size.
  double ForwardLoss(const Tensor& tokens, Probes* probes = nullptr);

  // The logits of every position (one rank, no tensor parallelism): tokens int32 [B, T] ->
  // [B*T, vocab].
  Tensor ForwardLogits(const Tensor& tokens);

  // Incremental decoding with the recurrent form: each step feeds one token per sequence and
  // carries the mixers' state, never recomputing the prefix (one rank only).
  struct DecodeState {
    std::vector<GatedDeltaNetMixer::State> mixers;
    int64_t position = 0;  // tokens fed so far
  };
  DecodeState NewDecodeState(int64_t B) const;
  // tokens: int32 [B], the next token of each sequence -> logits [B, vocab] for the token after.
  Tensor ForwardStep(const Tensor& tokens, DecodeState& state);

  // Activation recomputation: the forward keeps only each layer's input and the backward runs
  // each layer's forward again just before its backward. Less memory (one layer's activations
  // instead of all), about a third more computation, bitwise the same gradients.
  void set_recompute(bool on) { recompute_ = on; }
  // The recurrence's forward keeps its intermediates for its backward, where its kernel has them
  // (GatedDeltaNetMixer::Forward's save_recurrence): faster, for more memory. With recomputation
  // only the backward's forward keeps them, one layer's at a time. Bitwise the same gradients.
  void set_save_recurrence(bool on) { save_recurrence_ = on; }

  // Matrix-product FLOPs of one forward+backward token (6 x matrix parameters touched per token,
  // embedding lookup excluded), for throughput figures.
  double MatmulFlopsPerToken() const;

 private:
  struct Block {
    Parameter* mixer_norm;
    std::unique_ptr<GatedDeltaNetMixer> mixer;
    Parameter* mlp_norm;
    std::unique_ptr<SwiGluMlp> mlp;
    Tensor x, r1, h, r2;  // saved activations (the norms' outputs are the layers' to keep)
    size_t first_param = 0, end_param = 0;  // the block's parameters in params_.all()
  };
  // Runs the model up to the final norm (xf_) and saves what the backward needs; with
  // full_logits also the head's logits of every row (logits_, for ForwardLogits).
  // `for_backward`: the backward follows (only then does the recurrence save for it).
  void Forward(const Tensor& tokens, Probes* probes, bool full_logits, bool for_backward = false);
  // The head and the mean loss in chunks of rows of at most max_logits_elements_ logits, so the
  // full [N, vocab] logits never exist at once; with dxf ([N, width]) also the head's backward:
  // head grad += and dxf = the loss gradient at the final norm's output (this rank's part).
  double HeadAndLoss(double grad_scale, const Tensor& dxf, Probes* probes);
  // One block from its input blk.x and n1, blk.x's mixer norm (blk.r1 set), saving its
  // activations; returns the MLP's output f (the block's output is blk.h + f, made by the fused
  // add-and-norm after it).
  Tensor BlockForward(Block& blk, const Tensor& n1, int64_t B, int64_t T, Probes* probes,
                      bool save_recurrence);
  // Drops a block's saved activations but its input (recomputation keeps it to run the block
  // again; the backward drops it too).
  void ReleaseBlock(Block& blk);
  // The mean loss of `logits` (rows of targets); with dlogits (may alias logits) its gradient.
  double Loss(const Tensor& logits, const Tensor& targets, const Tensor& dlogits,
              double grad_scale);
  void Backward(const Tensor& dxf, GradientReducer* reducer);
  int64_t VocabOffset() const { return builder_.tp.rank * (builder_.dims.vocab / builder_.tp.size); }

  ParameterSet params_;
  LayerBuilder builder_;
  uint64_t seed_ = 0;
  bool recompute_ = false, save_recurrence_ = false;
  // Logits per head chunk: 128M floats (512 MB), e.g. 4194 rows of a 32000 vocabulary (smaller
  // chunks made the head's products measurably slower on an H200).
  int64_t max_logits_elements_ = int64_t{1} << 27;
  int64_t batch_ = 0, seq_ = 0;  // of the last Forward
  Parameter *embedding_, *final_norm_, *head_;
  double out_mult_ = 1;
  std::vector<Block> blocks_;
  // Saved for backward.
  Tensor inputs_, targets_, xf_in_, xf_, rf_, logits_;
};

}  // namespace gdn
