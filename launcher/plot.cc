#include "launcher/plot.h"

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/atomic_file.h"

namespace gdn {

std::string GnuplotQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

absl::Status RunGnuplot(const std::string& script_path, const std::string& script) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    return absl::FailedPreconditionError(
        "gnuplot not found: install it (apt-get install gnuplot-nox) to get the PNG plots");
  if (auto s = WriteFileAtomically(script_path, {{script.data(), script.size()}}); !s.ok()) return s;
  const std::filesystem::path path = std::filesystem::absolute(script_path);
  const std::string log = path.string() + ".log";
  const std::string command = absl::StrCat("cd '", path.parent_path().string(), "' && gnuplot '",
                                           path.filename().string(), "' >'", log, "' 2>&1");
  if (std::system(command.c_str()) == 0) {
    std::filesystem::remove(log);
    return absl::OkStatus();
  }
  std::string first_error = "see " + log;
  if (FILE* f = std::fopen(log.c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f))
      if (std::string(line).find("rror") != std::string::npos) {
        first_error = absl::StrCat(absl::StripSuffix(line, "\n"), " (", log, ")");
        break;
      }
    std::fclose(f);
  }
  return absl::InternalError(absl::StrCat(script_path, ": gnuplot failed: ", first_error));
}

}  // namespace gdn
