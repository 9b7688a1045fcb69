// `gdn export`, `gdn import`, `gdn eval` and `gdn sample`: trained models out of and into run
// directories, and what one can do with a model besides training it. All run on one rank; a
// run trained under tensor parallelism is read through its checkpoint's full tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/rng.h"

namespace gdn {

// Exports the run's checkpoint (the newest that verifies, or `step`'s) to out_dir in fla's
// layout (model/export.h). Returns the lines to print.
absl::StatusOr<std::vector<std::string>> ExportRun(const std::string& run_dir,
                                                   std::optional<int64_t> step,
                                                   const std::string& out_dir);

// Imports an exported model directory into a new run directory: spec.textproto (reconstructed,
// then the --set overrides, run.dir = run_dir) and a parameters-only checkpoint at step 0, so
// `gdn train --spec RUN/spec.textproto` continues training it and `gdn eval` evaluates it.
// Refuses a run directory that already holds a run (nothing is overwritten), and a spec that
// `gdn train` would refuse (its data files aside: they may come later).
absl::StatusOr<std::vector<std::string>> ImportRun(const std::string& from_dir,
                                                   const std::string& run_dir,
                                                   const std::vector<std::string>& overrides);

struct EvalOptions {
  std::optional<int64_t> step;
  std::string data;     // token shard (or glob); "" = the spec's data.val_path
  int64_t batches = -1; // batches of data.batch_size windows; -1 = run.eval_batches; 0 = all
                        // (more than the data's full batches is an error)
  // When set: a safetensors file with the first batch's input tokens ("tokens", I32 [B, T]) and
  // the model's logits for them ("logits", F32 [B, T, vocab]), for independent checks.
  std::string logits_out;
};
struct EvalResult {
  double loss = 0;           // mean next-token cross-entropy, nats per token
  int64_t tokens = 0;        // predicted tokens
  double bits_per_byte = 0;  // NaN when bytes per token are unknown
  int64_t step = 0;          // the checkpoint's step
  std::string data;
};
// Validation loss of the run's checkpoint on non-overlapping windows of the data (the windows the
// trainer's evaluation uses: `gdn eval` with the default batches repeats the run's last val_loss).
absl::StatusOr<EvalResult> EvalRun(const std::string& run_dir, const EvalOptions& options);

struct SampleOptions {
  std::optional<int64_t> step;
  std::string prompt;
  int64_t max_tokens = 200;
  double temperature = 0;  // 0: greedy
  int64_t top_k = 0;       // 0: the whole vocabulary
  uint64_t seed = 0;
};
// Picks the next token from logits[0..vocab): the argmax when temperature is 0, else a draw from
// softmax(logits / temperature) restricted to the top_k largest logits (0: all).
int64_t SampleToken(const float* logits, int64_t vocab, double temperature, int64_t top_k, Rng& rng);

// The prompt's continuation (bytes), decoded with the recurrent form one token at a time.
// Needs a byte-level model (vocabulary 256), since the prompt is text.
absl::StatusOr<std::string> SampleRun(const std::string& run_dir, const SampleOptions& options);

}  // namespace gdn
