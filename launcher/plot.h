// PNG plots through gnuplot (Debian's gnuplot-nox, pngcairo terminal): the caller writes the data
// files and a script; this runs it and turns a failure into a one-line error.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace gdn {

// Writes `script` to `script_path` (kept beside the plot, so it can be rerun and edited) and runs
// gnuplot on it in the script's directory. Errors: gnuplot missing (with the package to
// install), or gnuplot's first error line.
absl::Status RunGnuplot(const std::string& script_path, const std::string& script);

// A string as a gnuplot single-quoted literal.
std::string GnuplotQuote(const std::string& s);

}  // namespace gdn
