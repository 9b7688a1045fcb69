// A small JSON reader shared by the safetensors header (integers only, as that format needs) and
// exported model configs (config.json: floats, booleans and null too), plus string quoting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gdn {

// Whether `s` is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
// On failure *bad_at is the offset of the first bad byte.
bool ValidUtf8(std::string_view s, size_t* bad_at = nullptr);

// `s` as a JSON string literal, quotes included. Also used to quote names in error messages,
// which keeps every message on one line.
std::string JsonQuote(std::string_view s);

struct Json {
  enum class Kind { kObject, kArray, kString, kInt, kDouble, kBool, kNull };
  Kind kind = Kind::kInt;
  std::string str;                // kString
  int64_t num = 0;                // kInt (also kBool: 0 or 1)
  double real = 0;                // kDouble, and kInt as a double
  std::vector<std::string> keys;  // kObject, in file order; values[i] belongs to keys[i]
  std::vector<Json> values;       // kObject values, kArray items

  // The member called `key` of an object, or nullptr.
  const Json* Get(std::string_view key) const;
  bool IsNumber() const { return kind == Kind::kInt || kind == Kind::kDouble; }
};

// "an object", "an integer", ... for error messages.
const char* KindName(Json::Kind kind);

// A strict parser: duplicate object keys are refused. Without `full_json` only the subset of
// safetensors headers is accepted (objects, arrays, strings and integers; floats, true, false and
// null are refused). The text must already be valid UTF-8.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text, bool full_json = false)
      : text_(text), full_json_(full_json) {}

  // Parses one value followed only by whitespace. On failure returns nullopt and error().
  std::optional<Json> ParseDocument();
  const std::string& error() const { return error_; }

 private:
  static constexpr int kMaxDepth = 64;

  bool Fail(const std::string& what);
  void SkipSpace();
  bool Consume(char c);
  bool ParseValue(Json* v, int depth);
  bool ParseObject(Json* v, int depth);
  bool ParseArray(Json* v, int depth);
  bool ParseHex4(uint32_t* out);
  bool ParseString(std::string* out);
  bool ParseNumber(Json* v);
  bool ParseLiteral(Json* v);

  std::string_view text_;
  bool full_json_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace gdn
