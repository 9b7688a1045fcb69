#include "runtime/data_loader.h"

#include <stdlib.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/file_test_util.h"
#include "runtime/token_shard.h"

namespace gdn {
namespace {

class DataLoaderTest : public TempDirTest {
 protected:
  DataLoaderTest() : TempDirTest("data_loader_test") {}
};

// Tokens 0, 1, 2, ...: a window's position in the dataset is its first token.
TokenDataset Iota(int n) {
  std::vector<uint16_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = static_cast<uint16_t>(i);
  return TokenDataset::FromTokens(std::move(t), "iota");
}

TEST_F(DataLoaderTest, OpensOneFile) {
  ASSERT_TRUE(WriteTokenShard(dir_ + "/a.bin", {5, 9, 2}).ok());
  absl::StatusOr<TokenDataset> ds = TokenDataset::Open(dir_ + "/a.bin");
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->size(), 3);
  EXPECT_EQ(ds->max_token(), 9);
  EXPECT_EQ(ds->tokens()[0], 5);
  EXPECT_NE(ds->describe().find("3 tokens"), std::string::npos) << ds->describe();
}

TEST_F(DataLoaderTest, GlobConcatenatesInSortedOrder) {
  // Written out of order; read back sorted by name.
  ASSERT_TRUE(WriteTokenShard(dir_ + "/shard_001.bin", {3, 4, 5}).ok());
  ASSERT_TRUE(WriteTokenShard(dir_ + "/shard_000.bin", {1, 2}).ok());
  absl::StatusOr<TokenDataset> ds = TokenDataset::Open(dir_ + "/shard_*.bin");
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->size(), 5);
  EXPECT_EQ(std::vector<uint16_t>(ds->tokens(), ds->tokens() + 5), (std::vector<uint16_t>{1, 2, 3, 4, 5}));
  EXPECT_NE(ds->describe().find("2 shards"), std::string::npos) << ds->describe();
}

TEST_F(DataLoaderTest, GlobMatchingNothingFails) {
  absl::StatusOr<TokenDataset> ds = TokenDataset::Open(dir_ + "/none_*.bin");
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(ds.status().message().find("matches no file"), std::string::npos) << ds.status();
  EXPECT_NE(ds.status().message().find(dir_), std::string::npos) << ds.status();
}

TEST_F(DataLoaderTest, CorruptShardInGlobFailsNamingIt) {
  ASSERT_TRUE(WriteTokenShard(dir_ + "/s0.bin", {1, 2}).ok());
  std::filesystem::resize_file(dir_ + "/s0.bin", 1024 + 2);
  ASSERT_TRUE(WriteTokenShard(dir_ + "/s1.bin", {1, 2}).ok());
  absl::StatusOr<TokenDataset> ds = TokenDataset::Open(dir_ + "/s?.bin");
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find(dir_ + "/s0.bin"), std::string::npos) << ds.status();
}

TEST(BatchLoaderTest, CreateValidates) {
  TokenDataset ds = Iota(10);
  EXPECT_FALSE(BatchLoader::Create(&ds, 4, 6, 1, 0, 4).ok());   // 6 % 4 != 0
  EXPECT_FALSE(BatchLoader::Create(&ds, 4, 8, 1, 4, 4).ok());   // rank out of range
  EXPECT_FALSE(BatchLoader::Create(&ds, 0, 8, 1).ok());         // seq_len 0
  EXPECT_FALSE(BatchLoader::Create(&ds, 10, 8, 1).ok());        // needs 11 tokens
  EXPECT_TRUE(BatchLoader::Create(&ds, 9, 8, 1).ok());          // exactly one window
  absl::StatusOr<BatchLoader> small = BatchLoader::Create(&ds, 10, 8, 1);
  EXPECT_NE(small.status().message().find("iota"), std::string::npos) << small.status();
}

TEST(BatchLoaderTest, TrainBatchIsDeterministicPerStep) {
  TokenDataset ds = Iota(5000);
  const int T = 16, B = 8;
  absl::StatusOr<BatchLoader> a = BatchLoader::Create(&ds, T, B, 42);
  absl::StatusOr<BatchLoader> b = BatchLoader::Create(&ds, T, B, 42);
  absl::StatusOr<BatchLoader> c = BatchLoader::Create(&ds, T, B, 43);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::vector<int32_t> x(B * (T + 1)), y(x.size()), z(x.size());
  a->TrainBatch(7, x.data());
  a->TrainBatch(3, y.data());  // other steps in between must not matter
  b->TrainBatch(7, y.data());
  EXPECT_EQ(x, y);
  b->TrainBatch(8, y.data());
  EXPECT_NE(x, y);
  c->TrainBatch(7, z.data());
  EXPECT_NE(x, z);
}

TEST(BatchLoaderTest, TrainWindowsAreConsecutiveTokensAndCoverTheDataset) {
  const int n = 300, T = 7, B = 4;
  TokenDataset ds = Iota(n);
  absl::StatusOr<BatchLoader> l = BatchLoader::Create(&ds, T, B, 5);
  ASSERT_TRUE(l.ok());
  std::vector<int32_t> out(B * (T + 1));
  std::set<int> starts;
  for (int step = 0; step < 10000; ++step) {
    l->TrainBatch(step, out.data());
    for (int r = 0; r < B; ++r) {
      const int32_t* row = out.data() + r * (T + 1);
      ASSERT_GE(row[0], 0);
      ASSERT_LE(row[0] + T, n - 1);
      for (int t = 1; t <= T; ++t) ASSERT_EQ(row[t], row[0] + t);
      starts.insert(row[0]);
    }
  }
  // 40000 uniform draws over 293 starts: all (including both ends) are hit.
  EXPECT_EQ(starts.size(), static_cast<size_t>(n - T));
}

TEST(BatchLoaderTest, DataParallelRanksSliceTheGlobalBatch) {
  TokenDataset ds = Iota(1000);
  const int T = 5, B = 12, dp = 3, local = B / dp;
  absl::StatusOr<BatchLoader> whole = BatchLoader::Create(&ds, T, B, 9);
  ASSERT_TRUE(whole.ok());
  for (int64_t step : {0, 1, 1000}) {
    std::vector<int32_t> global(B * (T + 1)), joined;
    whole->TrainBatch(step, global.data());
    std::vector<int32_t> eval_global(B * (T + 1)), eval_joined;
    whole->EvalBatch(step, eval_global.data());
    for (int r = 0; r < dp; ++r) {
      absl::StatusOr<BatchLoader> rank = BatchLoader::Create(&ds, T, B, 9, r, dp);
      ASSERT_TRUE(rank.ok());
      EXPECT_EQ(rank->local_batch(), local);
      std::vector<int32_t> part(local * (T + 1));
      rank->TrainBatch(step, part.data());
      joined.insert(joined.end(), part.begin(), part.end());
      rank->EvalBatch(step, part.data());
      eval_joined.insert(eval_joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, global) << "step " << step;
    EXPECT_EQ(eval_joined, eval_global) << "eval batch " << step;
  }
}

TEST(BatchLoaderTest, EvalBatchesAreConsecutiveNonOverlappingWindows) {
  const int n = 100, T = 4, B = 3;  // 20 windows of 5 tokens
  TokenDataset ds = Iota(n);
  absl::StatusOr<BatchLoader> l = BatchLoader::Create(&ds, T, B, 1);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->num_eval_windows(), 20);
  // Validation scores each window once: at most the full batches the data holds.
  EXPECT_EQ(l->eval_batches(2), 2);
  EXPECT_EQ(l->eval_batches(100), 20 / B);
  auto wide = BatchLoader::Create(&ds, T, 21, 1);
  ASSERT_TRUE(wide.ok());
  EXPECT_EQ(wide->eval_batches(4), 0);  // fewer windows than one batch
  std::vector<int32_t> out(B * (T + 1)), again(out.size());
  for (int i = 0; i < 10; ++i) {
    l->EvalBatch(i, out.data());
    l->EvalBatch(i, again.data());
    EXPECT_EQ(out, again);
    for (int r = 0; r < B; ++r) {
      const int w = (i * B + r) % 20;  // wraps after window 19
      for (int t = 0; t <= T; ++t) ASSERT_EQ(out[r * (T + 1) + t], w * (T + 1) + t) << i << " " << r;
    }
  }
  // The first 6 batches (18 windows, before wrapping) use every token at most once.
  std::set<int32_t> seen;
  for (int i = 0; i < 6; ++i) {
    l->EvalBatch(i, out.data());
    for (int32_t v : out) EXPECT_TRUE(seen.insert(v).second) << v;
  }
}

}  // namespace
}  // namespace gdn
