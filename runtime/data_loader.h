// Token datasets and the batches cut from them. Training batches are pure functions of
// (seed, step), so a resume at any step sees exactly the data it would have seen, and the
// data-parallel ranks together see exactly one global batch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gdn {

// All tokens of one shard, or of a glob of shards concatenated in sorted path order.
class TokenDataset {
 public:
  // A path without glob characters (*?[) is read as one shard; otherwise glob(3) expands it.
  static absl::StatusOr<TokenDataset> Open(const std::string& path_or_glob);
  // In-memory dataset (tests, generated data); `name` shows in describe().
  static TokenDataset FromTokens(std::vector<uint16_t> tokens, std::string name);

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const uint16_t* tokens() const { return tokens_.data(); }
  // Largest token id present (-1 if empty): callers check it against the vocabulary size.
  int max_token() const { return max_token_; }
  // e.g. "data/train_*.bin: 3 shards, 1234567 tokens, max token 50256".
  std::string describe() const;

 private:
  TokenDataset(std::vector<uint16_t> tokens, std::string name, int num_files);

  std::vector<uint16_t> tokens_;
  std::string name_;
  int num_files_ = 0;
  int max_token_ = -1;
};

// Cuts windows of seq_len + 1 consecutive tokens (inputs and shifted targets) from a dataset.
// Each rank fills local_batch() = global_batch / dp_size rows: rank r holds rows
// [r * local_batch, (r + 1) * local_batch) of the global batch.
class BatchLoader {
 public:
  // Errors: seq_len or global_batch < 1, a bad dp_rank/dp_size, global_batch not divisible by
  // dp_size, or a dataset shorter than seq_len + 1 tokens. `dataset` must outlive the loader.
  static absl::StatusOr<BatchLoader> Create(const TokenDataset* dataset, int seq_len, int global_batch,
                                            uint64_t seed, int dp_rank = 0, int dp_size = 1);

  int seq_len() const { return seq_len_; }
  int global_batch() const { return global_batch_; }
  int local_batch() const { return global_batch_ / dp_size_; }

  // Training batch of global step `step`: each row starts at an offset drawn uniformly (with
  // replacement) from a stream that depends only on (seed, step, row).
  // `out` holds [local_batch, seq_len + 1] int32.
  void TrainBatch(int64_t step, int32_t* out) const;
  // The i-th validation batch: global row g is window (i * global_batch + g) mod
  // num_eval_windows(), window w being tokens [w * (seq_len + 1), (w + 1) * (seq_len + 1)).
  // Windows never overlap; they wrap to the start once the dataset is used up.
  void EvalBatch(int64_t i, int32_t* out) const;
  // Non-overlapping windows available before wrapping: size / (seq_len + 1), at least 1.
  int64_t num_eval_windows() const;
  // How many validation batches to score when `wanted` are asked for: at most the full batches
  // the dataset holds, so that each window counts once (0 when it holds less than one batch).
  int64_t eval_batches(int64_t wanted) const {
    return std::min<int64_t>(wanted, num_eval_windows() / global_batch_);
  }

 private:
  BatchLoader(const TokenDataset* dataset, int seq_len, int global_batch, uint64_t seed, int dp_rank,
              int dp_size);
  void CopyWindow(int64_t start, int32_t* out) const;

  const TokenDataset* dataset_;
  int seq_len_;
  int global_batch_;
  uint64_t seed_;
  int dp_rank_;
  int dp_size_;
};

}  // namespace gdn
