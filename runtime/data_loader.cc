#include "runtime/data_loader.h"

#include <glob.h>

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "runtime/rng.h"
#include "runtime/token_shard.h"

namespace gdn {

TokenDataset::TokenDataset(std::vector<uint16_t> tokens, std::string name, int num_files)
    : tokens_(std::move(tokens)), name_(std::move(name)), num_files_(num_files) {
  for (uint16_t t : tokens_) max_token_ = std::max<int>(max_token_, t);
}

TokenDataset TokenDataset::FromTokens(std::vector<uint16_t> tokens, std::string name) {
  return TokenDataset(std::move(tokens), std::move(name), 0);
}

absl::StatusOr<TokenDataset> TokenDataset::Open(const std::string& path_or_glob) {
  std::vector<std::string> paths;
  if (path_or_glob.find_first_of("*?[") == std::string::npos) {
    paths.push_back(path_or_glob);
  } else {
    glob_t g;
    int rc = ::glob(path_or_glob.c_str(), 0, nullptr, &g);
    if (rc == 0) paths.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    ::globfree(&g);
    if (rc == GLOB_NOMATCH) {
      return absl::NotFoundError(absl::StrFormat("%s: pattern matches no file", path_or_glob));
    }
    if (rc != 0) return absl::InternalError(absl::StrFormat("%s: glob failed (code %d)", path_or_glob, rc));
    // Byte order, not the locale's collation, so every machine concatenates alike.
    std::sort(paths.begin(), paths.end());
  }
  std::vector<uint16_t> all;
  for (const std::string& p : paths) {
    absl::StatusOr<std::vector<uint16_t>> shard = ReadTokenShard(p);
    if (!shard.ok()) return shard.status();
    if (paths.size() == 1) {
      all = std::move(*shard);
    } else {
      all.insert(all.end(), shard->begin(), shard->end());
    }
  }
  return TokenDataset(std::move(all), path_or_glob, static_cast<int>(paths.size()));
}

std::string TokenDataset::describe() const {
  std::string files = num_files_ == 0   ? "in memory"
                      : num_files_ == 1 ? "1 shard"
                                        : absl::StrFormat("%d shards", num_files_);
  return absl::StrFormat("%s: %s, %d tokens, max token %d", name_, files, size(), max_token_);
}

BatchLoader::BatchLoader(const TokenDataset* dataset, int seq_len, int global_batch, uint64_t seed,
                         int dp_rank, int dp_size)
    : dataset_(dataset),
      seq_len_(seq_len),
      global_batch_(global_batch),
      seed_(seed),
      dp_rank_(dp_rank),
      dp_size_(dp_size) {}

absl::StatusOr<BatchLoader> BatchLoader::Create(const TokenDataset* dataset, int seq_len,
                                                int global_batch, uint64_t seed, int dp_rank,
                                                int dp_size) {
  CHECK(dataset != nullptr);
  if (seq_len < 1 || global_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("seq_len (%d) and global_batch (%d) must be positive", seq_len, global_batch));
  }
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size) {
    return absl::InvalidArgumentError(absl::StrFormat("bad data-parallel rank %d of %d", dp_rank, dp_size));
  }
  if (global_batch % dp_size != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "global_batch %d is not divisible by the %d data-parallel ranks", global_batch, dp_size));
  }
  if (dataset->size() < seq_len + 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is too small: a window needs seq_len + 1 = %d tokens", dataset->describe(), seq_len + 1));
  }
  return BatchLoader(dataset, seq_len, global_batch, seed, dp_rank, dp_size);
}

void BatchLoader::CopyWindow(int64_t start, int32_t* out) const {
  const uint16_t* src = dataset_->tokens() + start;
  std::copy(src, src + seq_len_ + 1, out);
}

void BatchLoader::TrainBatch(int64_t step, int32_t* out) const {
  CHECK_GE(step, 0);
  const uint64_t step_seed = MixSeed(seed_, static_cast<uint64_t>(step));
  const uint64_t num_starts = dataset_->size() - seq_len_;  // starts whose window fits
  const int local = local_batch();
  for (int j = 0; j < local; ++j) {
    // One stream per global row: a rank draws its rows without replaying the others'.
    const int row = dp_rank_ * local + j;
    Rng rng(step_seed, static_cast<uint64_t>(row));
    CopyWindow(static_cast<int64_t>(rng.UniformInt(num_starts)), out + int64_t{j} * (seq_len_ + 1));
  }
}

int64_t BatchLoader::num_eval_windows() const { return dataset_->size() / (seq_len_ + 1); }

void BatchLoader::EvalBatch(int64_t i, int32_t* out) const {
  CHECK_GE(i, 0);
  const int64_t windows = num_eval_windows();
  const int local = local_batch();
  for (int j = 0; j < local; ++j) {
    const int64_t w = (i * global_batch_ + dp_rank_ * local + j) % windows;
    CopyWindow(w * (seq_len_ + 1), out + int64_t{j} * (seq_len_ + 1));
  }
}

}  // namespace gdn
