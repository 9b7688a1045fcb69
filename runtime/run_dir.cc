#include "runtime/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/atomic_file.h"

namespace gdn {

void JsonLine::Key(std::string_view key) {
  if (!body_.empty()) body_ += ",";
  absl::StrAppend(&body_, "\"", absl::string_view(key.data(), key.size()), "\":");
}

JsonLine& JsonLine::Add(std::string_view key, double value) {
  Key(key);
  // JSON has no NaN or infinity: a diverged loss is written as null. Finite values are written in
  // the shortest form that reads back exactly (resume and checks compare them bit for bit).
  if (!std::isfinite(value)) {
    body_ += "null";
    return *this;
  }
  char buf[32];
  body_.append(buf, std::to_chars(buf, buf + sizeof buf, value).ptr);
  return *this;
}

JsonLine& JsonLine::Add(std::string_view key, int64_t value) {
  Key(key);
  absl::StrAppend(&body_, value);
  return *this;
}

JsonLine& JsonLine::Add(std::string_view key, std::string_view value) {
  Key(key);
  body_ += "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') body_ += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      body_ += absl::StrFormat("\\u%04x", c);
      continue;
    }
    body_ += c;
  }
  body_ += "\"";
  return *this;
}

absl::StatusOr<double> JsonNumber(const std::string& json, std::string_view key) {
  const std::string needle = absl::StrCat("\"", absl::string_view(key.data(), key.size()), "\":");
  const size_t at = json.find(needle);
  if (at == std::string::npos)
    return absl::NotFoundError(absl::StrCat("no \"", needle, "\" in ", json));
  const char* start = json.c_str() + at + needle.size();
  if (std::strncmp(start, "null", 4) == 0) return std::nan("");
  char* end = nullptr;
  const double v = std::strtod(start, &end);
  if (end == start) return absl::InvalidArgumentError(absl::StrCat("not a number at ", needle));
  return v;
}

RunDirectory::Lock::~Lock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

absl::StatusOr<RunDirectory::Lock> RunDirectory::TryLock() const {
  const std::string path = File("lock");
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char holder[32] = {0};
    const ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "run.dir: ", path_, " is in use by another gdn process",
        n > 0 ? absl::StrCat(" (pid ", std::string(holder, n), ")") : std::string(),
        "; two runs in one directory would overwrite each other"));
  }
  const std::string pid = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot write: ", std::strerror(errno)));
  }
  return Lock(fd);
}

std::optional<bool> RunDirectory::IsLocked() const {
  const int fd = open(File("lock").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  // A shared lock is refused only while a trainer holds its exclusive one.
  const bool held = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  close(fd);  // releases the shared lock if it was taken
  return held;
}

absl::StatusOr<RunDirectory> RunDirectory::Open(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !std::filesystem::is_directory(path))
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot create the run directory: ", ec.message()));
  RunDirectory dir;
  dir.path_ = path;
  return dir;
}

RunDirectory RunDirectory::ForReading(const std::string& path) {
  RunDirectory dir;
  dir.path_ = path;
  return dir;
}

absl::Status RunDirectory::WriteFile(std::string_view name, const std::string& content) const {
  return WriteFileAtomically(File(name), {{content.data(), content.size()}});
}

absl::StatusOr<std::string> RunDirectory::ReadFile(std::string_view name) const {
  std::ifstream in(File(name), std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(File(name), ": cannot read"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool RunDirectory::Exists(std::string_view name) const {
  return std::filesystem::exists(File(name));
}

absl::Status RunDirectory::AppendLine(std::string_view name, const std::string& line) const {
  std::ofstream out(File(name), std::ios::app);
  out << line << "\n";
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat(File(name), ": cannot append"));
  return absl::OkStatus();
}

absl::Status RunDirectory::SetStatus(std::string_view status) const {
  return WriteFile("status", std::string(status) + "\n");
}

std::string RunDirectory::Status() const {
  auto s = ReadFile("status");
  if (!s.ok()) return "";
  std::string v = *s;
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

}  // namespace gdn
