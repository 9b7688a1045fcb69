#include "runtime/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "absl/strings/str_format.h"

namespace gdn {

namespace {
absl::Status WriteAll(int fd, const ByteSpan& span, const std::string& path) {
  const char* p = static_cast<const char*>(span.data);
  size_t n = span.size;
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrFormat("%s: write failed", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::vector<ByteSpan>& spans) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot create", tmp));
  absl::Status s;
  for (const ByteSpan& span : spans) {
    s = WriteAll(fd, span, tmp);
    if (!s.ok()) break;
  }
  if (s.ok() && ::fsync(fd) != 0)
    s = absl::ErrnoToStatus(errno, absl::StrFormat("%s: fsync failed", tmp));
  if (::close(fd) != 0 && s.ok())
    s = absl::ErrnoToStatus(errno, absl::StrFormat("%s: close failed", tmp));
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    s = absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot rename %s to it", path, tmp));
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace gdn
