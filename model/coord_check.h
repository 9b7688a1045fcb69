// The coordinate check (shared/docs/mup.md): train a few steps at a large, constant learning rate
// on one fixed batch at several widths and record the mean |coordinate| of every module's output
// after each step. Under a correct muP every curve is flat in width; a class of parameters whose
// multipliers are off shows as a probe that grows or shrinks with width.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "proto/gdn.pb.h"
#include "runtime/tensor.h"

namespace gdn {

struct CoordCheckResult {
  std::string label;                // e.g. "muP AdamW"
  std::vector<int> widths;
  std::vector<std::string> probes;  // display order
  int steps = 0;
  // values.at(probe)[step][i]: the probe at widths[i] after `step` updates (0: at init).
  // Per-layer probes are summed over the layers; "state" is the RMS coordinate of the final
  // recurrent state; "alpha" the mean decay exp(gamma).
  std::map<std::string, std::vector<std::vector<double>>> values;

  // max / min over widths of a probe after `step` updates.
  double Spread(const std::string& probe, int step) const;
};

// Trains `steps` updates of the model, parametrization and optimizer of `base` (resolved) at each
// width (its model.width set; every width must be valid for the model) from seed `base.run.seed`,
// on `tokens` (int32 [B, T + 1]) with the constant learning rate optimizer.lr: no warmup, no
// decay, no clipping, so the probes see the raw updates.
CoordCheckResult RunCoordCheck(const ExperimentSpec& base, const std::vector<int>& widths,
                               int steps, const Tensor& tokens);

// A table per step: probes x widths, then max/min.
std::string FormatCoordCheck(const CoordCheckResult& result);
// One CSV for several results: label,probe,step,width,value.
std::string CoordCheckCsv(const std::vector<CoordCheckResult>& results);

}  // namespace gdn
