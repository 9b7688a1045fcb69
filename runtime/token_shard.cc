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

namespace gdn {

// Shards are little endian; we copy them to and from memory as is.
static_assert(std::endian::native == std::endian::little, "token shards need a little-endian host");

namespace {

absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrFormat("%s: write failed", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status WriteFile(int fd, const std::string& tmp, const std::vector<uint16_t>& tokens) {
  int32_t header[256] = {};
  header[0] = kTokenShardMagic;
  header[1] = kTokenShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  if (absl::Status s = WriteAll(fd, header, sizeof(header), tmp); !s.ok()) return s;
  if (absl::Status s = WriteAll(fd, tokens.data(), tokens.size() * sizeof(uint16_t), tmp); !s.ok())
    return s;
  if (::fsync(fd) != 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: fsync failed", tmp));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteTokenShard(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d tokens do not fit one shard (the header count is an int32)", path, tokens.size()));
  }
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot create", tmp));
  absl::Status s = WriteFile(fd, tmp, tokens);
  if (::close(fd) != 0 && s.ok()) s = absl::ErrnoToStatus(errno, absl::StrFormat("%s: close failed", tmp));
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot rename %s to it", path, tmp));
  }
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
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
