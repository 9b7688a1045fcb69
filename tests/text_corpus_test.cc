#include "runtime/text_corpus.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tests/file_test_util.h"
#include "runtime/token_shard.h"

namespace gdn {
namespace {

TEST(StripBrownTagsTest, SmallSample) {
  const std::string tagged =
      "\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' ,/, "
      "Atlanta's/np$ 1-1/2/cd wasn't/bedz* ./.\n"
      "\tIt/pps ended/vbd (/( maybe/rb )/) ;/. ok/uh ?/.\n"
      "\n\n\n"
      "\tNew/jj paragraph/nn ./.\n\n";
  EXPECT_EQ(StripBrownTags(tagged),
            "The Fulton County said \"no evidence\", Atlanta's 1-1/2 wasn't.\n"
            "It ended (maybe); ok?\n"
            "\n"
            "New paragraph.\n");
}

TEST(StripBrownTagsTest, EmptyAndUntagged) {
  EXPECT_EQ(StripBrownTags(""), "");
  EXPECT_EQ(StripBrownTags("\n\t\n"), "");
  EXPECT_EQ(StripBrownTags("plain words"), "plain words\n");
}

class PrepareCorpusTest : public TempDirTest {
 protected:
  PrepareCorpusTest() : TempDirTest("text_corpus_test") {}
  void SetUp() override {
    TempDirTest::SetUp();
    in_ = dir_ + "/in";
    out_ = dir_ + "/out/sub";
    std::filesystem::create_directories(in_);
  }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(in_ + "/" + name, std::ios::binary) << text;
  }
  std::string Tokens(const std::string& split) {
    absl::StatusOr<std::vector<uint16_t>> t = ReadTokenShard(out_ + "/" + split + ".bin");
    EXPECT_TRUE(t.ok()) << t.status();
    std::string s;
    if (t.ok()) {
      for (uint16_t v : *t) {
        EXPECT_LT(v, 256);
        s += static_cast<char>(v);
      }
    }
    return s;
  }
  std::string in_, out_;
};

TEST_F(PrepareCorpusTest, BrownSplitsDocumentsDeterministically) {
  // Written out of order; cb01 sorts between ca02 and cc01.
  Write("cc01", "\n\tThird/od ./.\n");
  Write("ca01", "\n\tFirst/od doc/nn ./.\n\n\tSecond/od para/nn ./.\n");
  Write("cb01", "\tVal/nn doc/nn !/.\n");
  Write("ca02", "\tAnother/dt ./.\n");
  Write("README", "not a document");
  Write("cats.txt", "ca01 news");
  Write("categories.pickle", "xx");
  Write("package.json", "{}");
  std::filesystem::create_directories(in_ + "/cd01");  // a directory, not a document
  CorpusOptions o{in_, "brown", out_, 3};
  std::string summary;
  absl::Status s = PrepareCorpus(o, &summary);
  ASSERT_TRUE(s.ok()) << s;
  // Sorted: ca01 ca02 cb01 cc01; index 2 (2 % 3 == 2) is validation.
  EXPECT_EQ(Tokens("train"), "First doc.\n\nSecond para.\n\nAnother.\n\nThird.\n\n");
  EXPECT_EQ(Tokens("val"), "Val doc!\n\n");
  EXPECT_NE(summary.find("4 documents"), std::string::npos) << summary;
  EXPECT_NE(summary.find("3 documents, 44 tokens"), std::string::npos) << summary;
  EXPECT_NE(summary.find("1 documents, 10 tokens"), std::string::npos) << summary;

  // Running again gives the same bytes.
  const std::string train = Tokens("train");
  ASSERT_TRUE(PrepareCorpus(o, nullptr).ok());
  EXPECT_EQ(Tokens("train"), train);
}

TEST_F(PrepareCorpusTest, TextFormatKeepsRawBytes) {
  Write("a.txt", "h\xc3\xa9llo\n");   // UTF-8 bytes pass through as tokens
  Write("b.md", "second\n\n\n");
  CorpusOptions o{in_, "text", out_, 2};
  ASSERT_TRUE(PrepareCorpus(o, nullptr).ok());
  EXPECT_EQ(Tokens("train"), "h\xc3\xa9llo\n\n");
  EXPECT_EQ(Tokens("val"), "second\n\n");
}

// With --out the input folder, a second run does not read the first one's shards as documents:
// it writes the same shards again.
TEST_F(PrepareCorpusTest, OutputInsideTheInputIsNotReadBack) {
  Write("a.txt", "first\n");
  Write("b.txt", "second\n");
  out_ = in_;
  CorpusOptions o{in_, "text", in_ + "/.", 2};
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run);
    std::string summary;
    ASSERT_TRUE(PrepareCorpus(o, &summary).ok());
    EXPECT_NE(summary.find(": 2 documents;"), std::string::npos) << summary;
    EXPECT_EQ(Tokens("train"), "first\n\n");
    EXPECT_EQ(Tokens("val"), "second\n\n");
  }
  // Elsewhere, files of those names are documents like any other.
  out_ = dir_ + "/out";
  ASSERT_TRUE(PrepareCorpus({in_, "text", out_, 2}, nullptr).ok());
  EXPECT_EQ(Tokens("train").substr(0, 7), "first\n\n");
  EXPECT_NE(Tokens("val").find("second\n\n"), std::string::npos);
}

TEST_F(PrepareCorpusTest, Errors) {
  std::string summary;
  absl::Status s = PrepareCorpus({dir_ + "/missing", "brown", out_, 20}, &summary);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find(dir_ + "/missing"), std::string::npos) << s;

  Write("README", "x");
  s = PrepareCorpus({in_, "brown", out_, 20}, &summary);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("no brown documents"), std::string::npos) << s;

  Write("ca01", "\tone/cd\n");
  s = PrepareCorpus({in_, "brown", out_, 20}, &summary);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("validation split is empty"), std::string::npos) << s;
  EXPECT_NE(s.message().find(in_), std::string::npos) << s;

  EXPECT_EQ(PrepareCorpus({in_, "html", out_, 20}, &summary).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareCorpus({in_, "brown", out_, 1}, &summary).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gdn
