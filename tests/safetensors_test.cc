#include "runtime/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/file_test_util.h"

namespace gdn {
namespace {

// Substring check without gmock (only gtest is linked).
::testing::AssertionResult HasSubstr(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

std::string U64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}
template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
// A file from its header JSON (used as is, no padding) and data bytes.
std::string File(const std::string& header, const std::string& data) {
  return U64(header.size()) + header + data;
}

class SafetensorsTest : public TempDirTest {
 protected:
  SafetensorsTest() : TempDirTest("safetensors_test") {}
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` to a fresh file and expects reading it to fail with an error that is one
  // line, names the file and contains `problem`.
  void ExpectCorrupt(const std::string& bytes, const std::string& problem) {
    const std::string path = Path("corrupt" + std::to_string(n_++) + ".safetensors");
    WriteBytes(path, bytes);
    absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
    ASSERT_FALSE(r.ok()) << "expected an error containing: " << problem;
    const std::string msg(r.status().message());
    EXPECT_TRUE(HasSubstr(msg, path));
    EXPECT_TRUE(HasSubstr(msg, problem));
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }

  int n_ = 0;
};

// A valid two-tensor file used by the corruption tests: "a" F32 [2] at [0, 8), "b" I32 [1]
// at [8, 12).
const char kValidHeader[] =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
    R"("b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})";
std::string ValidData() { return Bytes(std::vector<float>{1.5f, -2.f}) + Bytes(std::vector<int32_t>{7}); }

TEST_F(SafetensorsTest, RoundTrip) {
  Tensor w = Tensor::Empty({2, 3}, DType::kF32);
  for (int i = 0; i < 6; ++i) w.data<float>()[i] = 0.25f * i - 1.f;
  Tensor scalar = Tensor::Empty({}, DType::kF64);
  scalar.data<double>()[0] = 3.141592653589793;
  Tensor ids = Tensor::Empty({4}, DType::kI32);
  for (int i = 0; i < 4; ++i) ids.data<int32_t>()[i] = -2 + 1000000 * i;
  Tensor empty = Tensor::Empty({0, 3}, DType::kF32);
  Tensor d = Tensor::Empty({3, 1}, DType::kF64);
  for (int i = 0; i < 3; ++i) d.data<double>()[i] = 1e-300 * (i + 1);

  const std::string weird = "layer.0/w \"q\"\\\n\t\x01 \xc3\xa9";  // quotes, escapes, UTF-8
  const std::vector<std::pair<std::string, Tensor>> in = {
      {"w", w}, {"scalar", scalar}, {"ids", ids}, {"empty", empty}, {weird, d}};
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"note", "a \"quoted\"\nline / \xe2\x82\xac"}, {"empty", ""}};
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, in, meta).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // The header length is a multiple of 8, so the data is 8-byte aligned.
  const std::string bytes = ReadBytes(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);

  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->metadata, meta);
  ASSERT_EQ(r->tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    // Written in order, so file order (by offset) is the same, except that the empty tensor
    // shares its offset with the next one and sorts first either way.
    const auto& [name, t] = r->tensors[i];
    EXPECT_EQ(name, in[i].first);
    EXPECT_EQ(t.dtype(), in[i].second.dtype()) << name;
    EXPECT_EQ(t.shape(), in[i].second.shape()) << name;
    ASSERT_EQ(t.nbytes(), in[i].second.nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.raw(), in[i].second.raw(), t.nbytes()), 0) << name;
  }
  ASSERT_NE(r->Find("scalar"), nullptr);
  EXPECT_EQ(r->Find("scalar")->data<double>()[0], 3.141592653589793);
  EXPECT_EQ(r->Find("scalar")->rank(), 0);
  ASSERT_NE(r->Find(weird), nullptr);
  EXPECT_EQ(r->Find(weird)->data<double>()[2], d.data<double>()[2]);
  EXPECT_EQ(r->Find("empty")->shape(), (Shape{0, 3}));
  EXPECT_EQ(r->Find("missing"), nullptr);
  EXPECT_EQ(r->Find("ids")->data<int32_t>()[3], 2999998);

  // No tensors and no metadata is a valid file too.
  ASSERT_TRUE(WriteSafetensors(Path("none.safetensors"), {}).ok());
  absl::StatusOr<SafetensorsFile> none = ReadSafetensors(Path("none.safetensors"));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->tensors.empty());
  EXPECT_TRUE(none->metadata.empty());
  EXPECT_EQ(ReadBytes(Path("none.safetensors")), U64(8) + "{}      ");
}

TEST_F(SafetensorsTest, ByteExactLayout) {
  Tensor a = Tensor::Empty({2}, DType::kF32);
  a.data<float>()[0] = 1.f;   // 0x3f800000
  a.data<float>()[1] = -2.f;  // 0xc0000000
  Tensor b = Tensor::Empty({1, 1}, DType::kI32);
  b.data<int32_t>()[0] = 0x01020304;
  const std::string path = Path("tiny.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", a}, {"b\"", b}}, {{"k", "v\n"}}).ok());

  // 139 bytes of JSON + 5 spaces of padding = 144 = 0x90.
  const std::string json =
      R"({"__metadata__":{"k":"v\n"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b\"":{"dtype":"I32","shape":[1,1],"data_offsets":[8,12]}})";
  ASSERT_EQ(json.size(), 139u);
  std::string expected("\x90\0\0\0\0\0\0\0", 8);
  expected += json + "     ";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  expected += std::string("\x04\x03\x02\x01", 4);
  EXPECT_EQ(ReadBytes(path), expected);
}

TEST_F(SafetensorsTest, ReadsOutOfOrderTensorsAndPaddedHeader) {
  // Header keys in the order b, __metadata__, a; data holds a first. Whitespace everywhere and
  // trailing spaces (not to a multiple of 8: readers must not insist).
  const std::string header =
      "{ \"b\" : {\"shape\": [2], \"data_offsets\": [8, 16], \"dtype\": \"I32\"},\n"
      "  \"__metadata__\": {\"x\": \"\\u00e9\\/\\t\\\\\\\"\\b\\f\\r\\u20AC\"},\n"
      "  \"a\": {\"dtype\": \"F64\", \"shape\": [], \"data_offsets\": [0, 8]} }     ";
  const std::string data = Bytes(std::vector<double>{3.5}) + Bytes(std::vector<int32_t>{7, -9});
  const std::string path = Path("hand.safetensors");
  WriteBytes(path, File(header, data));

  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_EQ(r->tensors[0].first, "a");
  EXPECT_EQ(r->tensors[1].first, "b");
  EXPECT_EQ(r->tensors[0].second.dtype(), DType::kF64);
  EXPECT_EQ(r->tensors[0].second.shape(), Shape{});
  EXPECT_EQ(r->tensors[0].second.data<double>()[0], 3.5);
  EXPECT_EQ(r->tensors[1].second.dtype(), DType::kI32);
  EXPECT_EQ(r->tensors[1].second.data<int32_t>()[0], 7);
  EXPECT_EQ(r->tensors[1].second.data<int32_t>()[1], -9);
  EXPECT_EQ(r->metadata.at("x"), "\xc3\xa9/\t\\\"\b\f\r\xe2\x82\xac");
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string path = Path("nope.safetensors");
  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsNotFound(r.status())) << r.status();
  EXPECT_TRUE(HasSubstr(std::string(r.status().message()), path));
  // A directory is not a file either.
  r = ReadSafetensors(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(HasSubstr(std::string(r.status().message()), dir_));
}

TEST_F(SafetensorsTest, ValidHelperFileReads) {
  // Guards the corruption tests below: the unmodified file is fine.
  const std::string path = Path("valid.safetensors");
  WriteBytes(path, File(kValidHeader, ValidData()));
  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tensors.size(), 2u);
}

TEST_F(SafetensorsTest, Truncated) {
  const std::string full = File(kValidHeader, ValidData());
  const size_t header_end = 8 + std::string(kValidHeader).size();
  ExpectCorrupt(full.substr(0, 0), "shorter than the 8-byte header length");
  ExpectCorrupt(full.substr(0, 4), "shorter than the 8-byte header length");
  ExpectCorrupt(full.substr(0, 7), "shorter than the 8-byte header length");
  ExpectCorrupt(full.substr(0, 8), "beyond the end of the file");
  ExpectCorrupt(full.substr(0, 30), "beyond the end of the file");
  ExpectCorrupt(full.substr(0, header_end - 1), "beyond the end of the file");
  ExpectCorrupt(full.substr(0, header_end), "point outside the file");
  ExpectCorrupt(full.substr(0, header_end + 5), "point outside the file");
  ExpectCorrupt(full.substr(0, full.size() - 1), "point outside the file");
}

TEST_F(SafetensorsTest, HeaderLengthTooLarge) {
  std::string bytes = File(kValidHeader, ValidData());
  const std::string huge = U64(uint64_t{1} << 40);
  bytes.replace(0, 8, huge);
  ExpectCorrupt(bytes, "header length 1099511627776 is beyond the end of the file");
  bytes.replace(0, 8, U64(~uint64_t{0}));  // would overflow 8 + N
  ExpectCorrupt(bytes, "is beyond the end of the file");
}

TEST_F(SafetensorsTest, BadJson) {
  const std::string data = ValidData();
  ExpectCorrupt(File(R"({"a":)", data), "not valid JSON");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", data),
                "not valid JSON");  // unterminated object
  ExpectCorrupt(File(R"({"a":{"dtype":"F32" "shape":[2]}})", data), "expected ',' or '}'");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data),
                "only integers");
  ExpectCorrupt(File(R"({"a":{"dtype":"F\q32"}})", data), "bad escape");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32\ud800"}})", data), "surrogate");
  ExpectCorrupt(File(R"({"a":{}, "a":{}})", data), "duplicate key \"a\"");
  ExpectCorrupt(File(R"({"a":null})", data), "not supported");
  ExpectCorrupt(File(R"({} x)", data), "unexpected characters after");
  ExpectCorrupt(File("{\"a\x01\":{}}", data), "control character");
  ExpectCorrupt(File("{\"\xff\":{}}", data), "not valid UTF-8");
  ExpectCorrupt(File(R"({"a":{"shape":[99999999999999999999]}})", data), "out of range");
  ExpectCorrupt(File("", data), "not valid JSON");
  ExpectCorrupt(File(R"([1,2])", data), "header is an array, not a JSON object");
  ExpectCorrupt(File(R"("x")", data), "not a JSON object");
  ExpectCorrupt(File(R"({"a":[1]})", data), "tensor \"a\" is an array, not an object");
  ExpectCorrupt(File(R"({"__metadata__":{"k":1}})", ""), "metadata entry \"k\" is an integer");
  ExpectCorrupt(File(R"({"__metadata__":[]})", ""), "\"__metadata__\" is an array");
}

TEST_F(SafetensorsTest, MissingOrMalformedField) {
  const std::string d8 = Bytes(std::vector<float>{1.f, 2.f});
  ExpectCorrupt(File(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", d8), "tensor \"w\": missing \"dtype\"");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", d8), "tensor \"w\": missing \"shape\"");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":[2]}})", d8), "tensor \"w\": missing \"data_offsets\"");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", d8),
                "unknown field \"x\"");
  ExpectCorrupt(File(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", d8), "\"dtype\" is an integer");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", d8), "\"shape\" is an integer");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8), "non-negative");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8), "two non-negative");
  ExpectCorrupt(File(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,8]}})", d8), "two non-negative");
}

TEST_F(SafetensorsTest, UnsupportedDType) {
  const std::string d4 = Bytes(std::vector<uint16_t>{1, 2});
  ExpectCorrupt(File(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", d4),
                "tensor \"w\": unsupported dtype \"BF16\"");
  ExpectCorrupt(File(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", d4),
                "unsupported dtype \"f32\"");
}

TEST_F(SafetensorsTest, BadOffsets) {
  const std::string d12 = std::string(12, '\0');
  const std::string d16 = std::string(16, '\0');
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d12),
                "tensor \"b\" (bytes [4, 12]) overlaps tensor \"a\" (bytes [0, 8])");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", d16),
                "gap of 4 bytes before tensor \"b\"");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d12),
                "gap of 4 bytes before tensor \"a\"");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d12),
                "4 bytes after the last tensor");
  ExpectCorrupt(File("{}", d12), "12 bytes after the last tensor");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", d12),
                "data_offsets [8, 0] are out of order");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d12),
                "data_offsets [0, 16] point outside the file");
  // Two tensors at the same range.
  ExpectCorrupt(File(R"({"a":{"dtype":"I32","shape":[3],"data_offsets":[0,12]},)"
                     R"("b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", d12),
                "overlaps");
}

TEST_F(SafetensorsTest, SizeMismatch) {
  const std::string d12 = std::string(12, '\0');
  ExpectCorrupt(File(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,12]}})", d12),
                "tensor \"a\": data_offsets [0, 12] hold 12 bytes but shape [2] of F64 needs 16 bytes");
  ExpectCorrupt(File(R"({"a":{"dtype":"I32","shape":[],"data_offsets":[0,12]}})", d12),
                "needs 4 bytes");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,12]}})", d12),
                "needs 0 bytes");
  ExpectCorrupt(File(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                     R"("data_offsets":[0,12]}})", d12),
                "more than fits a file");
}

TEST_F(SafetensorsTest, WriteRefusesDuplicateAndBadNames) {
  Tensor a = Tensor::Zeros({2}, DType::kF32);
  const std::string path = Path("dup.safetensors");
  absl::Status s = WriteSafetensors(path, {{"x", a}, {"y", a}, {"x", a}});
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(HasSubstr(std::string(s.message()), path));
  EXPECT_TRUE(HasSubstr(std::string(s.message()), "duplicate tensor name \"x\""));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  s = WriteSafetensors(path, {{"__metadata__", a}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(path, {{"bad\xff", a}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(path, {{"undefined", Tensor()}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(path, {{"a", a}}, {{"k", "\xc3"}});
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(SafetensorsTest, OverwritesAtomically) {
  const std::string path = Path("w.safetensors");
  Tensor a = Tensor::Zeros({3}, DType::kI32);
  ASSERT_TRUE(WriteSafetensors(path, {{"a", a}}).ok());
  a.data<int32_t>()[1] = 5;
  ASSERT_TRUE(WriteSafetensors(path, {{"a", a}, {"b", a}}).ok());
  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_EQ(r->Find("b")->data<int32_t>()[1], 5);
  // A write into a missing directory fails with the path and leaves nothing behind.
  absl::Status s = WriteSafetensors(Path("no/such/dir.safetensors"), {{"a", a}});
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(HasSubstr(std::string(s.message()), Path("no/such/dir.safetensors")));
}

}  // namespace
}  // namespace gdn
