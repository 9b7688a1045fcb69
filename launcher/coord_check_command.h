// `gdn coord-check`: the coordinate check (model/coord_check.h) over widths, parametrizations and
// optimizers, on the first training batch of the spec's data: tables, a CSV and one PNG per
// configuration (a panel per probe, mean |coordinate| against width, a line per step).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/gdn.pb.h"

namespace gdn {

struct CoordCheckOptions {
  std::vector<int> widths;
  int steps = 3;
  std::vector<ParametrizationSpec::Kind> parametrizations;
  std::vector<OptimizerSpec::Kind> optimizers;
  double adamw_lr = 0, sgd_lr = 0;  // 0: the spec's optimizer.lr
  std::string out_dir;
};

// Parses "64,128,256" style lists and the kinds by name; errors name the flag.
absl::StatusOr<CoordCheckOptions> ParseCoordCheckFlags(const std::string& widths, int steps,
                                                       const std::string& parametrizations,
                                                       const std::string& optimizers,
                                                       const std::string& adamw_lr,
                                                       const std::string& sgd_lr,
                                                       const std::string& out_dir);

// Validates every configuration (each width against the model's constraints) before computing,
// then runs them, prints the tables and writes coord_check.csv, coord_check.txt and
// coord_check_<config>.png (+ .dat, .gp) into out_dir.
absl::Status RunCoordCheckCommand(const ExperimentSpec& spec, const CoordCheckOptions& options);

}  // namespace gdn
