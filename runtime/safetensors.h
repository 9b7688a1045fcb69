// The safetensors format, written and read by our own code (no JSON library).
//
// Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (padded with spaces to a
// multiple of 8), then the raw little-endian tensor data. The JSON maps each tensor name to
// {"dtype": "F32"|"F64"|"I32", "shape": [...], "data_offsets": [begin, end]} with offsets
// relative to the first data byte, end exclusive; an optional "__metadata__" object maps strings
// to strings. The tensors' byte ranges tile the data region exactly, in any order.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/tensor.h"

namespace gdn {

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order (sorted by offset)
  // The tensor called `name`, or nullptr.
  const Tensor* Find(const std::string& name) const;
};

// Writes the tensors (CPU, F32/F64/I32) in the given order, atomically: path + ".tmp", fsync,
// rename. Names must be unique, valid UTF-8 and not "__metadata__"; metadata keys and values
// must be valid UTF-8.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Reads and validates a file; every error is one line naming the path and the problem.
// Supported dtypes: F32, F64, I32.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

}  // namespace gdn
