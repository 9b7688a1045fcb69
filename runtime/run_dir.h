// A run directory is the unit of state of one run: the resolved spec (spec.textproto), its status,
// metrics (metrics.jsonl, one JSON object a line), the final summary (summary.json) and, later,
// checkpoints. Sweeps only create, start and read run directories.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gdn {

// One JSON object, built field by field and written as a single line.
class JsonLine {
 public:
  JsonLine& Add(std::string_view key, double value);
  JsonLine& Add(std::string_view key, int64_t value);
  JsonLine& Add(std::string_view key, int value) { return Add(key, static_cast<int64_t>(value)); }
  JsonLine& Add(std::string_view key, std::string_view value);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void Key(std::string_view key);
  std::string body_;
};

// Reads the number stored under `key` in a one-line JSON object written by JsonLine.
absl::StatusOr<double> JsonNumber(const std::string& json, std::string_view key);

class RunDirectory {
 public:
  // Creates the directory (and its parents) when missing.
  static absl::StatusOr<RunDirectory> Open(const std::string& path);
  // A reader's handle: creates nothing; a missing directory reads as one without files.
  static RunDirectory ForReading(const std::string& path);
  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const { return path_ + "/" + std::string(name); }

  // Writes name atomically (temporary file, fsync, rename): a reader sees the old or the new file.
  absl::Status WriteFile(std::string_view name, const std::string& content) const;
  absl::StatusOr<std::string> ReadFile(std::string_view name) const;
  bool Exists(std::string_view name) const;
  // Appends one line and flushes it (metrics survive a crash up to the last step).
  absl::Status AppendLine(std::string_view name, const std::string& line) const;

  // The run's state: "running", "done", "diverged" or "failed" ("" when never started).
  absl::Status SetStatus(std::string_view status) const;
  std::string Status() const;

  // Holds an exclusive lock on <dir>/lock (flock, with this process's pid in the file) until the
  // returned object dies: two trainers in one directory would interleave metrics and remove each
  // other's checkpoint files. The kernel releases it when the process dies, even by kill -9.
  class Lock {
   public:
    Lock(Lock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;
    Lock& operator=(Lock&&) = delete;
    ~Lock();

   private:
    friend class RunDirectory;
    explicit Lock(int fd) : fd_(fd) {}
    int fd_;
  };
  // An error naming the directory and the holder's pid when another process holds it.
  absl::StatusOr<Lock> TryLock() const;
  // Whether some process holds the lock now; std::nullopt when the directory has no lock file
  // (never trained, or by a gdn from before the lock). Changes nothing.
  std::optional<bool> IsLocked() const;

 private:
  std::string path_;
};

}  // namespace gdn
