#include "runtime/json.h"

#include <cstdlib>
#include <limits>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gdn {

// Whether `s` is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
// On failure *bad_at is the offset of the first bad byte.
bool ValidUtf8(std::string_view s, size_t* bad_at) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int extra;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, cp = c & 0x07;
    } else {
      if (bad_at) *bad_at = i;
      return false;
    }
    if (i + extra >= s.size()) {  // not enough continuation bytes
      if (bad_at) *bad_at = i;
      return false;
    }
    for (int k = 1; k <= extra; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) {
        if (bad_at) *bad_at = i;
        return false;
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      if (bad_at) *bad_at = i;
      return false;
    }
    i += extra + 1;
  }
  return true;
}

namespace {
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}
}  // namespace


// `s` as a JSON string literal, quotes included. Also used to quote names in error messages,
// which keeps every message on one line.
std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(ch);
        }
    }
  }
  out += "\"";
  return out;
}

const char* KindName(Json::Kind kind) {
  switch (kind) {
    case Json::Kind::kObject: return "an object";
    case Json::Kind::kArray: return "an array";
    case Json::Kind::kString: return "a string";
    case Json::Kind::kInt: return "an integer";
    case Json::Kind::kDouble: return "a number";
    case Json::Kind::kBool: return "a boolean";
    case Json::Kind::kNull: return "null";
  }
  return "?";
}

const Json* Json::Get(std::string_view key) const {
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i] == key) return &values[i];
  return nullptr;
}

std::optional<Json> JsonParser::ParseDocument() {
  Json v;
  SkipSpace();
  if (!ParseValue(&v, 0)) return std::nullopt;
  SkipSpace();
  if (pos_ != text_.size()) {
    Fail("unexpected characters after the top-level value");
    return std::nullopt;
  }
  return v;
}

bool JsonParser::Fail(const std::string& what) {
  if (error_.empty())
    error_ = absl::StrFormat("%s at byte %d%s", what, pos_, full_json_ ? "" : " of the header");
  return false;
}

void JsonParser::SkipSpace() {
  while (pos_ < text_.size() &&
         (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
    ++pos_;
}

bool JsonParser::Consume(char c) {
  if (pos_ < text_.size() && text_[pos_] == c) {
    ++pos_;
    return true;
  }
  return false;
}

bool JsonParser::ParseValue(Json* v, int depth) {
  if (depth > kMaxDepth) return Fail("nesting too deep");
  if (pos_ >= text_.size()) return Fail("unexpected end of JSON");
  const char c = text_[pos_];
  if (c == '{') return ParseObject(v, depth);
  if (c == '[') return ParseArray(v, depth);
  if (c == '"') {
    v->kind = Json::Kind::kString;
    return ParseString(&v->str);
  }
  if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(v);
  if (c == 't' || c == 'f' || c == 'n') {
    if (full_json_) return ParseLiteral(v);
    return Fail("true, false and null are not supported in a safetensors header");
  }
  return Fail(absl::StrFormat("unexpected character '%c'", c));
}

bool JsonParser::ParseObject(Json* v, int depth) {
  v->kind = Json::Kind::kObject;
  ++pos_;  // '{'
  SkipSpace();
  if (Consume('}')) return true;
  std::set<std::string> seen;
  while (true) {
    SkipSpace();
    if (pos_ >= text_.size() || text_[pos_] != '"') return Fail("expected a string key");
    const size_t key_at = pos_;
    std::string key;
    if (!ParseString(&key)) return false;
    if (!seen.insert(key).second) {
      pos_ = key_at;
      return Fail(absl::StrCat("duplicate key ", JsonQuote(key)));
    }
    SkipSpace();
    if (!Consume(':')) return Fail("expected ':'");
    SkipSpace();
    Json value;
    if (!ParseValue(&value, depth + 1)) return false;
    v->keys.push_back(std::move(key));
    v->values.push_back(std::move(value));
    SkipSpace();
    if (Consume(',')) continue;
    if (Consume('}')) return true;
    return Fail("expected ',' or '}'");
  }
}

bool JsonParser::ParseArray(Json* v, int depth) {
  v->kind = Json::Kind::kArray;
  ++pos_;  // '['
  SkipSpace();
  if (Consume(']')) return true;
  while (true) {
    SkipSpace();
    Json item;
    if (!ParseValue(&item, depth + 1)) return false;
    v->values.push_back(std::move(item));
    SkipSpace();
    if (Consume(',')) continue;
    if (Consume(']')) return true;
    return Fail("expected ',' or ']'");
  }
}

bool JsonParser::ParseHex4(uint32_t* out) {
  if (pos_ + 4 > text_.size()) return Fail("truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = text_[pos_ + i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return Fail("bad hex digit in \\u escape");
  }
  pos_ += 4;
  *out = v;
  return true;
}

// The text is already known to be valid UTF-8, so bytes >= 0x80 are copied as they are.
bool JsonParser::ParseString(std::string* out) {
  ++pos_;  // '"'
  while (true) {
    if (pos_ >= text_.size()) return Fail("unterminated string");
    const char c = text_[pos_];
    if (c == '"') {
      ++pos_;
      return true;
    }
    if (static_cast<unsigned char>(c) < 0x20) return Fail("control character in a string");
    if (c != '\\') {
      out->push_back(c);
      ++pos_;
      continue;
    }
    ++pos_;
    if (pos_ >= text_.size()) return Fail("unterminated string");
    const char e = text_[pos_++];
    switch (e) {
      case '"': out->push_back('"'); break;
      case '\\': out->push_back('\\'); break;
      case '/': out->push_back('/'); break;
      case 'b': out->push_back('\b'); break;
      case 'f': out->push_back('\f'); break;
      case 'n': out->push_back('\n'); break;
      case 'r': out->push_back('\r'); break;
      case 't': out->push_back('\t'); break;
      case 'u': {
        uint32_t cp;
        if (!ParseHex4(&cp)) return false;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("unpaired low surrogate in \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo;
          if (!(Consume('\\') && Consume('u')) || !ParseHex4(&lo) || lo < 0xDC00 || lo > 0xDFFF)
            return Fail("unpaired high surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        AppendUtf8(cp, out);
        break;
      }
      default:
        --pos_;
        return Fail(absl::StrFormat("bad escape '\\%c'", e));
    }
  }
}

bool JsonParser::ParseNumber(Json* v) {
  v->kind = Json::Kind::kInt;
  const size_t start = pos_;
  const bool negative = Consume('-');
  if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
    return Fail("expected a digit");
  if (text_[pos_] == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' &&
      text_[pos_ + 1] <= '9')
    return Fail("leading zero in a number");
  // Accumulate as a negative number so INT64_MIN fits.
  int64_t n = 0;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    const int d = text_[pos_] - '0';
    if (n < (std::numeric_limits<int64_t>::min() + d) / 10) return Fail("integer out of range");
    n = n * 10 - d;
    ++pos_;
  }
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
    if (!full_json_) return Fail("only integers are supported in a safetensors header");
    // A JSON number with a fraction or exponent: validate its grammar, then let strtod read it.
    if (Consume('.')) {
      if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
        return Fail("expected a digit after '.'");
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    }
    if (Consume('e') || Consume('E')) {
      if (!Consume('+')) Consume('-');
      if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
        return Fail("expected a digit in the exponent");
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    }
    v->kind = Json::Kind::kDouble;
    v->real = std::strtod(std::string(text_.substr(start, pos_ - start)).c_str(), nullptr);
    return true;
  }
  if (!negative) {
    if (n == std::numeric_limits<int64_t>::min()) return Fail("integer out of range");
    n = -n;
  }
  v->num = n;
  v->real = static_cast<double>(n);
  return true;
}

bool JsonParser::ParseLiteral(Json* v) {
  for (auto [word, kind, num] : {std::tuple{"true", Json::Kind::kBool, 1},
                                 {"false", Json::Kind::kBool, 0}, {"null", Json::Kind::kNull, 0}}) {
    const std::string_view w(word);
    if (text_.substr(pos_, w.size()) == w) {
      pos_ += w.size();
      v->kind = kind;
      v->num = num;
      return true;
    }
  }
  return Fail("unexpected literal");
}

}  // namespace gdn
