#include "runtime/text_corpus.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "runtime/token_shard.h"

namespace gdn {

namespace fs = std::filesystem;

namespace {

// Punctuation written without a space before it / after it.
bool NoSpaceBefore(std::string_view w) {
  return w == "," || w == "." || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" || w == "''";
}
bool NoSpaceAfter(std::string_view w) { return w == "(" || w == "``"; }

std::string UntagLine(std::string_view line) {
  std::string out;
  bool glue = true;  // no space before the next word
  size_t pos = 0;
  while (true) {
    // Tokens are separated by runs of spaces/tabs (and a CR from CRLF files).
    pos = line.find_first_not_of(" \t\r", pos);
    if (pos == std::string_view::npos) break;
    size_t end = std::min(line.find_first_of(" \t\r", pos), line.size());
    std::string_view tok = line.substr(pos, end - pos);
    pos = end;
    size_t slash = tok.rfind('/');
    std::string_view word = slash == std::string_view::npos ? tok : tok.substr(0, slash);
    if (!glue && !NoSpaceBefore(word)) out += ' ';
    out += (word == "``" || word == "''") ? std::string_view("\"") : word;
    glue = NoSpaceAfter(word);
  }
  return out;
}

// Brown documents are named like ca01: two lowercase letters, two digits.
bool IsBrownDocumentName(const std::string& n) {
  auto lower = [](char c) { return c >= 'a' && c <= 'z'; };
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  return n.size() == 4 && lower(n[0]) && lower(n[1]) && digit(n[2]) && digit(n[3]);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot open", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrFormat("%s: read failed", path));
  return std::move(ss).str();
}

}  // namespace

std::string StripBrownTags(std::string_view tagged) {
  std::string out;
  bool pending_blank = false;
  for (size_t pos = 0; pos <= tagged.size();) {
    size_t end = std::min(tagged.find('\n', pos), tagged.size());
    std::string text = UntagLine(tagged.substr(pos, end - pos));
    pos = end + 1;
    if (text.empty()) {
      pending_blank = !out.empty();
      continue;
    }
    if (pending_blank) out += '\n';
    pending_blank = false;
    out += text;
    out += '\n';
  }
  return out;
}

absl::Status PrepareCorpus(const CorpusOptions& options, std::string* summary) {
  const std::string& dir = options.input_dir;
  const bool brown = options.format == "brown";
  if (!brown && options.format != "text") {
    return absl::InvalidArgumentError(
        absl::StrFormat("unknown corpus format \"%s\" (expected \"brown\" or \"text\")", options.format));
  }
  if (options.val_every < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("val_every must be at least 2 (got %d): the train split would be empty", options.val_every));
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrFormat("%s: input directory not found", dir));
  }
  // With --out the input folder itself, the shards an earlier run wrote there (and their
  // temporary files) are not documents.
  const char* const kShards[2] = {"train.bin", "val.bin"};
  std::error_code same_ec;
  const bool out_is_in = fs::equivalent(dir, options.out_dir, same_ec);
  auto is_shard = [&](const std::string& name) {
    for (const std::string shard : kShards)
      if (name == shard || name == shard + ".tmp") return true;
    return false;
  };
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    std::string name = e.path().filename().string();
    if (out_is_in && is_shard(name)) continue;
    if (!brown || IsBrownDocumentName(name)) names.push_back(std::move(name));
  }
  if (ec) return absl::InternalError(absl::StrFormat("%s: cannot list: %s", dir, ec.message()));
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    return absl::NotFoundError(absl::StrFormat("%s: no %s documents found%s", dir, options.format,
                                               brown ? " (expected files named like ca01)" : ""));
  }

  std::vector<uint16_t> split[2];  // 0 train, 1 val
  int64_t docs[2] = {0, 0};
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StatusOr<std::string> raw = ReadFile((fs::path(dir) / names[i]).string());
    if (!raw.ok()) return raw.status();
    std::string text = brown ? StripBrownTags(*raw) : std::move(*raw);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    text += "\n\n";
    const int s = (i % options.val_every == static_cast<size_t>(options.val_every - 1)) ? 1 : 0;
    for (unsigned char c : text) split[s].push_back(c);
    ++docs[s];
  }
  if (docs[1] == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: the validation split is empty (%d documents, val_every %d)", dir, names.size(), options.val_every));
  }

  fs::create_directories(options.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrFormat("%s: cannot create: %s", options.out_dir, ec.message()));
  const std::string paths[2] = {(fs::path(options.out_dir) / kShards[0]).string(),
                                (fs::path(options.out_dir) / kShards[1]).string()};
  for (int s = 0; s < 2; ++s) {
    if (absl::Status st = WriteTokenShard(paths[s], split[s]); !st.ok()) return st;
  }
  if (summary != nullptr) {
    *summary = absl::StrFormat("%s (%s): %d documents; %s: %d documents, %d tokens; %s: %d documents, %d tokens",
                               dir, options.format, names.size(), paths[0], docs[0], split[0].size(),
                               paths[1], docs[1], split[1].size());
  }
  return absl::OkStatus();
}

}  // namespace gdn
