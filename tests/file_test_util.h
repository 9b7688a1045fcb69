// Helpers shared by the data tests: a fresh directory per test, and whole files as bytes (to
// build corrupt ones).
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace gdn {

// A new empty directory /tmp/<prefix>.XXXXXX.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
  const char* d = mkdtemp(tmpl.data());
  EXPECT_NE(d, nullptr) << tmpl;
  return tmpl;
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}
inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fixture whose tests each get a fresh directory dir_, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override { dir_ = MakeTempDir(prefix_); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;

 private:
  std::string prefix_;
};

}  // namespace gdn
