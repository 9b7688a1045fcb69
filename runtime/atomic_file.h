// Writing a file so that a reader, or a crash, sees either the old file or the whole new one.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace gdn {

// A run of bytes to write.
struct ByteSpan {
  const void* data;
  size_t size;
};

// Writes the spans in order to path + ".tmp", fsyncs it and renames it over path. On failure the
// temporary file is removed and path is left as it was; errors name the file.
absl::Status WriteFileAtomically(const std::string& path, const std::vector<ByteSpan>& spans);

}  // namespace gdn
