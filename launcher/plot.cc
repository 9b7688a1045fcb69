#include "launcher/plot.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "launcher/process.h"
#include "runtime/atomic_file.h"

namespace gdn {

bool HaveGnuplot() { return !FindOnPath("gnuplot").empty(); }

std::string GnuplotQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

absl::Status RunGnuplot(const std::string& script_path, const std::string& script,
                        const std::string& workdir) {
  if (!HaveGnuplot())
    return absl::FailedPreconditionError(
        "gnuplot not found: install it (apt-get install gnuplot-nox) to get the PNG plots");
  if (auto s = WriteFileAtomically(script_path, {{script.data(), script.size()}}); !s.ok()) return s;
  const std::string log = script_path + ".log";
  std::error_code ec;
  std::filesystem::remove(log, ec);
  const std::string absolute = std::filesystem::absolute(script_path).string();
  auto code = RunProcess({"gnuplot", "-e", "cd " + GnuplotQuote(workdir), absolute}, log);
  if (!code.ok()) return code.status();
  if (*code == 0) {
    std::filesystem::remove(log, ec);
    return absl::OkStatus();
  }
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  return absl::InternalError(
      absl::StrCat("gnuplot ", script_path, " failed (exit ", *code, "): ", text.str()));
}

}  // namespace gdn
