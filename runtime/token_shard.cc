#include "runtime/token_shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "runtime/atomic_file.h"

namespace gdn {

// Shards are little endian; we copy them to and from memory as is.
static_assert(std::endian::native == std::endian::little, "token shards need a little-endian host");

absl::Status WriteTokenShard(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d tokens do not fit one shard (the header count is an int32)", path, tokens.size()));
  }
  int32_t header[256] = {};
  header[0] = kTokenShardMagic;
  header[1] = kTokenShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  return WriteFileAtomically(path, {{header, sizeof(header)},
                                    {tokens.data(), tokens.size() * sizeof(uint16_t)}});
}

absl::StatusOr<std::vector<uint16_t>> ReadTokenShard(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot open token shard", path));
  struct Closer {
    FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};

  struct stat st;
  if (::fstat(::fileno(f), &st) != 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot stat", path));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrFormat("%s: not a regular file", path));
  const int64_t size = st.st_size;
  if (size < kTokenShardHeaderBytes) {
    return absl::DataLossError(absl::StrFormat(
        "%s: truncated header (the file holds %d bytes; a token shard header is %d)", path, size,
        kTokenShardHeaderBytes));
  }
  int32_t header[256];
  if (std::fread(header, 1, sizeof(header), f) != sizeof(header)) {
    return absl::DataLossError(absl::StrFormat("%s: cannot read the header", path));
  }
  if (header[0] != kTokenShardMagic) {
    return absl::DataLossError(absl::StrFormat(
        "%s: bad magic %d (expected %d; not an llm.c token shard)", path, header[0], kTokenShardMagic));
  }
  if (header[1] != kTokenShardVersion) {
    return absl::DataLossError(absl::StrFormat("%s: unsupported version %d (expected %d)", path,
                                               header[1], kTokenShardVersion));
  }
  const int64_t count = header[2];
  if (count < 0) return absl::DataLossError(absl::StrFormat("%s: negative token count %d", path, count));
  const int64_t body = size - kTokenShardHeaderBytes;
  if (body != 2 * count) {
    return absl::DataLossError(absl::StrFormat("%s: header says %d tokens but the file holds %d%s", path,
                                               count, body / 2, body % 2 ? " and a stray byte" : ""));
  }
  std::vector<uint16_t> tokens(count);
  if (std::fread(tokens.data(), sizeof(uint16_t), count, f) != static_cast<size_t>(count)) {
    return absl::DataLossError(absl::StrFormat("%s: short read of %d tokens", path, count));
  }
  return tokens;
}

}  // namespace gdn
