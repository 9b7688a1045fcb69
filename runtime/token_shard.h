// llm.c token shards: a header of 256 little-endian int32 ([0] magic 20240520, [1] version 1,
// [2] token count) followed by the tokens as uint16. GPT-2 shards written by llm.c's
// data scripts read as they are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gdn {

inline constexpr int32_t kTokenShardMagic = 20240520;
inline constexpr int32_t kTokenShardVersion = 1;
inline constexpr int64_t kTokenShardHeaderBytes = 256 * sizeof(int32_t);

// Writes atomically: path + ".tmp", fsync, rename, so a reader never sees half a shard.
absl::Status WriteTokenShard(const std::string& path, const std::vector<uint16_t>& tokens);

// Reads and validates a shard; every error names the path and what is wrong.
absl::StatusOr<std::vector<uint16_t>> ReadTokenShard(const std::string& path);

}  // namespace gdn
