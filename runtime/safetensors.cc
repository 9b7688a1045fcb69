#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/atomic_file.h"
#include "runtime/json.h"

namespace gdn {

// The data is little endian; we copy it to and from memory as is.
static_assert(std::endian::native == std::endian::little, "safetensors needs a little-endian host");

namespace {

constexpr char kMetadataKey[] = "__metadata__";

// ---------------------------------------------------------------------------------------------
// Dtypes.

const char* SafetensorsDType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kI32: return "I32";
    case DType::kBF16: return "BF16";  // written only: gdn reads float32, float64, int32
  }
  return "?";
}

std::optional<DType> ParseDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F64") return DType::kF64;
  if (s == "I32") return DType::kI32;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// File I/O.


// Reads exactly n bytes at offset; false (with errno, or 0 for end of file) if it cannot.
bool PreadAll(int fd, void* data, size_t n, uint64_t offset) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (r == 0) {
      errno = 0;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};


// One parsed header entry.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

}  // namespace

const Tensor* SafetensorsFile::Find(const std::string& name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return &t;
  }
  return nullptr;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot write safetensors: ", what));
  };
  // Validate everything before touching the file system.
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (!names.insert(name).second) return bad(absl::StrCat("duplicate tensor name ", JsonQuote(name)));
    if (name == kMetadataKey) return bad(absl::StrCat("a tensor may not be called ", JsonQuote(name)));
    if (!ValidUtf8(name)) return bad(absl::StrCat("tensor name ", JsonQuote(name), " is not valid UTF-8"));
    if (!t.defined()) return bad(absl::StrCat("tensor ", JsonQuote(name), " is undefined"));
    if (t.device() != Device::kCPU) return bad(absl::StrCat("tensor ", JsonQuote(name), " is not on the CPU"));
  }
  for (const auto& [k, v] : metadata) {
    if (!ValidUtf8(k) || !ValidUtf8(v))
      return bad(absl::StrCat("metadata entry ", JsonQuote(k), " is not valid UTF-8"));
  }

  // The header: metadata first (if any), then the tensors in the given order, no whitespace.
  std::string header = "{";
  if (!metadata.empty()) {
    header += JsonQuote(kMetadataKey);
    header += ":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      header += JsonQuote(k) + ":" + JsonQuote(v);
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.size() > 1) header += ",";
    const uint64_t end = offset + t.nbytes();
    absl::StrAppend(&header, JsonQuote(name), ":{\"dtype\":\"", SafetensorsDType(t.dtype()),
                    "\",\"shape\":[", absl::StrJoin(t.shape(), ","), "],\"data_offsets\":[",
                    offset, ",", end, "]}");
    offset = end;
  }
  header += "}";
  // Pad so that the data starts 8-byte aligned.
  header.append((8 - header.size() % 8) % 8, ' ');

  std::string prefix(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(prefix.data(), &n, 8);
  prefix += header;

  std::vector<ByteSpan> spans = {{prefix.data(), prefix.size()}};
  for (const auto& [name, t] : tensors) spans.push_back({t.raw(), t.nbytes()});
  return WriteFileAtomically(path, spans);
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  auto corrupt = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path, ": bad safetensors file: ", what));
  };

  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot open", path));
  struct stat st;
  if (::fstat(f.fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrFormat("%s: cannot stat", path));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  auto read_error = [&](const std::string& what) -> absl::Status {
    if (errno != 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot read ", what));
    return corrupt(absl::StrCat("file ends while reading ", what));
  };

  if (file_size < 8)
    return corrupt(absl::StrFormat("the file is %d bytes, shorter than the 8-byte header length", file_size));
  uint64_t header_len;
  if (!PreadAll(f.fd, &header_len, 8, 0)) return read_error("the header length");
  if (header_len > file_size - 8)
    return corrupt(absl::StrFormat("header length %d is beyond the end of the file (%d bytes)",
                                   header_len, file_size));
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  std::string header(header_len, '\0');
  if (!PreadAll(f.fd, header.data(), header_len, 8)) return read_error("the header");
  size_t bad_at = 0;
  if (!ValidUtf8(header, &bad_at))
    return corrupt(absl::StrFormat("header is not valid UTF-8 (byte %d)", bad_at));
  JsonParser parser(header);
  std::optional<Json> root = parser.ParseDocument();
  if (!root) return corrupt(absl::StrCat("header is not valid JSON: ", parser.error()));
  if (root->kind != Json::Kind::kObject)
    return corrupt(absl::StrCat("header is ", KindName(root->kind), ", not a JSON object"));

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (size_t i = 0; i < root->keys.size(); ++i) {
    const std::string& name = root->keys[i];
    const Json& value = root->values[i];
    if (name == kMetadataKey) {
      if (value.kind != Json::Kind::kObject)
        return corrupt(absl::StrCat("\"__metadata__\" is ", KindName(value.kind), ", not an object"));
      for (size_t j = 0; j < value.keys.size(); ++j) {
        if (value.values[j].kind != Json::Kind::kString)
          return corrupt(absl::StrCat("metadata entry ", JsonQuote(value.keys[j]), " is ",
                                      KindName(value.values[j].kind), ", not a string"));
        out.metadata[value.keys[j]] = value.values[j].str;
      }
      continue;
    }
    const std::string qname = absl::StrCat("tensor ", JsonQuote(name));
    if (value.kind != Json::Kind::kObject)
      return corrupt(absl::StrCat(qname, " is ", KindName(value.kind), ", not an object"));
    const Json* dtype = nullptr;
    const Json* shape = nullptr;
    const Json* offsets = nullptr;
    for (size_t j = 0; j < value.keys.size(); ++j) {
      const std::string& k = value.keys[j];
      if (k == "dtype") dtype = &value.values[j];
      else if (k == "shape") shape = &value.values[j];
      else if (k == "data_offsets") offsets = &value.values[j];
      else return corrupt(absl::StrCat(qname, ": unknown field ", JsonQuote(k)));
    }
    if (!dtype) return corrupt(absl::StrCat(qname, ": missing \"dtype\""));
    if (!shape) return corrupt(absl::StrCat(qname, ": missing \"shape\""));
    if (!offsets) return corrupt(absl::StrCat(qname, ": missing \"data_offsets\""));

    Entry e;
    e.name = name;
    if (dtype->kind != Json::Kind::kString)
      return corrupt(absl::StrCat(qname, ": \"dtype\" is ", KindName(dtype->kind), ", not a string"));
    std::optional<DType> dt = ParseDType(dtype->str);
    if (!dt)
      return corrupt(absl::StrCat(qname, ": unsupported dtype ", JsonQuote(dtype->str),
                                  " (supported: F32, F64, I32)"));
    e.dtype = *dt;

    if (shape->kind != Json::Kind::kArray)
      return corrupt(absl::StrCat(qname, ": \"shape\" is ", KindName(shape->kind), ", not an array"));
    // Element count, guarding against overflow: the byte size must fit in the file anyway.
    for (const Json& d : shape->values) {
      if (d.kind != Json::Kind::kInt || d.num < 0)
        return corrupt(absl::StrCat(qname, ": \"shape\" must hold non-negative integers"));
      e.shape.push_back(d.num);
    }
    // Element count, guarding against overflow (the byte size must fit in the file anyway).
    uint64_t numel = 1;
    bool too_big = false;
    if (std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end()) {
      numel = 0;
    } else {
      for (int64_t d : e.shape) {
        if (numel > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) {
          too_big = true;
          break;
        }
        numel *= static_cast<uint64_t>(d);
      }
    }

    if (offsets->kind != Json::Kind::kArray || offsets->values.size() != 2 ||
        offsets->values[0].kind != Json::Kind::kInt || offsets->values[1].kind != Json::Kind::kInt ||
        offsets->values[0].num < 0 || offsets->values[1].num < 0)
      return corrupt(absl::StrCat(qname, ": \"data_offsets\" must be two non-negative integers"));
    e.begin = static_cast<uint64_t>(offsets->values[0].num);
    e.end = static_cast<uint64_t>(offsets->values[1].num);
    if (e.begin > e.end)
      return corrupt(absl::StrFormat("%s: data_offsets [%d, %d] are out of order", qname, e.begin, e.end));
    if (e.end > data_size)
      return corrupt(absl::StrFormat(
          "%s: data_offsets [%d, %d] point outside the file (the data region is %d bytes)", qname,
          e.begin, e.end, data_size));
    const uint64_t have = e.end - e.begin;
    const size_t elem = DTypeSize(e.dtype);
    if (too_big || numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != have)
      return corrupt(absl::StrFormat("%s: data_offsets [%d, %d] hold %d bytes but shape %s of %s needs %s",
                                     qname, e.begin, e.end, have, ShapeString(e.shape), dtype->str,
                                     too_big ? std::string("more than fits a file")
                                             : absl::StrCat(numel * elem, " bytes")));
    entries.push_back(std::move(e));
  }

  // The byte ranges must tile [0, data_size) exactly.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < at)
      return corrupt(absl::StrFormat("tensor %s (bytes [%d, %d]) overlaps tensor %s (bytes [%d, %d])",
                                     JsonQuote(e.name), e.begin, e.end, JsonQuote(prev->name),
                                     prev->begin, prev->end));
    if (e.begin > at)
      return corrupt(absl::StrFormat("gap of %d bytes before tensor %s (bytes [%d, %d]): the tensors "
                                     "do not tile the data region",
                                     e.begin - at, JsonQuote(e.name), e.begin, e.end));
    at = e.end;
    prev = &e;
  }
  if (at != data_size)
    return corrupt(absl::StrFormat("%d bytes after the last tensor: the tensors do not tile the "
                                   "data region (%d bytes)",
                                   data_size - at, data_size));

  out.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::Empty(e.shape, e.dtype);
    if (!PreadAll(f.fd, t.raw(), e.end - e.begin, data_start + e.begin))
      return read_error(absl::StrCat("tensor ", JsonQuote(e.name)));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace gdn
