#include "runtime/token_shard.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/file_test_util.h"

namespace gdn {
namespace {

void PatchInt32(std::string& bytes, int index, int32_t v) {
  std::memcpy(bytes.data() + 4 * index, &v, 4);
}

class TokenShardTest : public TempDirTest {
 protected:
  TokenShardTest() : TempDirTest("token_shard_test") {}
  void SetUp() override {
    TempDirTest::SetUp();
    path_ = dir_ + "/x.bin";
    ASSERT_TRUE(WriteTokenShard(path_, {1, 2, 3, 50256, 65535}).ok());
    good_ = ReadBytes(path_);
  }
  void ExpectError(const std::string& bytes, absl::StatusCode code, const std::string& what) {
    WriteBytes(path_, bytes);
    absl::StatusOr<std::vector<uint16_t>> r = ReadTokenShard(path_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find(path_), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status();
  }
  std::string path_, good_;
};

TEST_F(TokenShardTest, RoundTrip) {
  absl::StatusOr<std::vector<uint16_t>> r = ReadTokenShard(path_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, (std::vector<uint16_t>{1, 2, 3, 50256, 65535}));
  EXPECT_EQ(access((path_ + ".tmp").c_str(), F_OK), -1);  // temp file renamed away
}

TEST_F(TokenShardTest, LayoutMatchesLlmC) {
  ASSERT_EQ(good_.size(), 1024u + 2 * 5);
  int32_t header[3];
  std::memcpy(header, good_.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 5);
  uint16_t t;
  std::memcpy(&t, good_.data() + 1024 + 2 * 3, 2);
  EXPECT_EQ(t, 50256);
}

TEST_F(TokenShardTest, EmptyShardRoundTrips) {
  ASSERT_TRUE(WriteTokenShard(path_, {}).ok());
  absl::StatusOr<std::vector<uint16_t>> r = ReadTokenShard(path_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->empty());
}

TEST_F(TokenShardTest, BadMagic) {
  std::string b = good_;
  PatchInt32(b, 0, 12345);
  ExpectError(b, absl::StatusCode::kDataLoss, "bad magic 12345");
}

TEST_F(TokenShardTest, BadVersion) {
  std::string b = good_;
  PatchInt32(b, 1, 7);
  ExpectError(b, absl::StatusCode::kDataLoss, "version 7");
}

TEST_F(TokenShardTest, TruncatedTokens) {
  ExpectError(good_.substr(0, good_.size() - 4), absl::StatusCode::kDataLoss,
              "header says 5 tokens but the file holds 3");
}

TEST_F(TokenShardTest, ExtraBytes) {
  ExpectError(good_ + "x", absl::StatusCode::kDataLoss, "stray byte");
}

TEST_F(TokenShardTest, TruncatedHeader) {
  ExpectError(good_.substr(0, 100), absl::StatusCode::kDataLoss, "truncated header");
}

TEST_F(TokenShardTest, MissingFile) {
  const std::string missing = dir_ + "/nope.bin";
  absl::StatusOr<std::vector<uint16_t>> r = ReadTokenShard(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(missing), std::string::npos) << r.status();
}

TEST_F(TokenShardTest, WriteIntoMissingDirectoryFails) {
  absl::Status s = WriteTokenShard(dir_ + "/no/such/dir/x.bin", {1});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no/such/dir"), std::string::npos) << s;
}

}  // namespace
}  // namespace gdn
