// PNG plots through gnuplot (Debian's gnuplot-nox, pngcairo terminal): the callers write the data
// files and a script; this writes the script beside the plots and runs it.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace gdn {

// Whether gnuplot is on the PATH.
bool HaveGnuplot();

// Writes `script` to `script_path` (kept, so the plots can be drawn again after editing) and runs
// gnuplot on it from `workdir`, where the script's relative paths start. Errors: gnuplot missing
// (naming the package to install), or gnuplot's failure with its log (script_path + ".log").
absl::Status RunGnuplot(const std::string& script_path, const std::string& script,
                        const std::string& workdir);

// A string as a gnuplot single-quoted literal.
std::string GnuplotQuote(const std::string& s);

}  // namespace gdn
