// Experiment specs (proto/gdn.proto): load text format, apply --set overrides, fill defaults,
// validate, and expand a sweep into its grid of runs. Every error is one line that names the
// file or the field path it is about.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/gdn.pb.h"

namespace gdn {

// Parses a text-format spec file. Errors: "FILE: cannot read: <reason>" or
// "FILE:LINE:COL: <parser message>" (an unknown field is an error naming the field).
absl::StatusOr<ExperimentSpec> LoadSpec(const std::string& path);
absl::StatusOr<ExperimentSpec> ParseSpecText(const std::string& text,
                                             const std::string& source_name);

// Applies "a.b.c=value" (one --set override) by field path. Scalars and enums parse as in text
// format (enums by name, e.g. optimizer.kind=SGD); strings are taken verbatim, without quotes.
// A repeated field takes a comma-separated list that replaces its old values
// (sweep.widths=64,128,256; an empty value clears it). Setting a field marks it present.
// Errors read "--set <assignment>: <why>", e.g. "no field 'widht' in gdn.ModelSpec".
absl::Status ApplyOverride(ExperimentSpec* spec, std::string_view assignment);

// Sets every unset singular field, recursively (unset sub-messages are created), to its declared
// default, so the spec written into a run directory states every value the run used.
// Repeated fields (and the messages inside them) are left as they are.
void FillDefaults(google::protobuf::Message* message);

// Clears the fields that say how a run is kept and scheduled, not what it computes (run.dir, the
// checkpoint and signal fields, run.device, the slurm block): run ids and the trainer's test of
// "the same run" both start from this.
void ClearBookkeeping(ExperimentSpec* spec);

// Text format; doubles print so that they parse back to the same value.
std::string SpecToText(const google::protobuf::Message& message);

// Checks the fields that do not need the model's derived sizes (the model layer checks those):
// signs and ranges, that data.train_path / data.val_path name a readable file or a glob matching
// at least one file, and the sweep lists (positive widths and learning rates, axes that name an
// existing field and whose values parse). All problems found are joined into one line with "; ".
// It checks the base spec only: to check every run of a sweep, validate each ExpandGrid point.
// check_data_paths false asks only that the data paths be set, not that their files exist (for
// verbs that read run directories only, and an import whose data may come later).
absl::Status ValidateSpec(const ExperimentSpec& spec, bool check_data_paths = true);

// One point of a sweep grid.
struct GridPoint {
  std::vector<std::string> assignments;  // e.g. {"model.width=128", "optimizer.lr=0.001"}, axis order
  ExperimentSpec spec;                   // base spec, assignments applied, defaults filled, no sweep
  std::string id;                        // RunId(spec, assignments)
};

// The cartesian product of every non-empty list of spec.sweep, in this order (first slowest):
// parametrizations, optimizers, widths, learning_rates, seeds, then each of sweep.axes.
// Each point's run.dir is sweep.dir + "/" + id. The point's sweep is cleared (a point is one run),
// so adding values to a sweep keeps the ids of the points it already had.
// Errors: an empty grid, an axis with no field, no values or a bad value, duplicate run ids.
absl::StatusOr<std::vector<GridPoint>> ExpandGrid(const ExperimentSpec& spec);

// A readable, stable run id: short names of the assignments joined by '_'
// (e.g. "mup_adamw_w128_lr1e-03_s0"; other fields as <leaf name><value>, e.g. "depth4") + "-" +
// 8 hex digits of an FNV-1a 64 hash of the resolved spec text (defaults filled, run.dir cleared),
// so a changed base spec gives a new id. Only [A-Za-z0-9._+-] appear in it.
std::string RunId(const ExperimentSpec& resolved, const std::vector<std::string>& assignments);

}  // namespace gdn
