// Models that leave the tool: the public Gated DeltaNet layout of flash-linear-attention's
// GatedDeltaNetForCausalLM (config.json + model.safetensors), and back.
//
// Names and shapes (L = layer index; C = channels, K = conv_size):
//   model.embeddings.weight [V, d]            <- alpha_in * embedding (the input multiplier folded)
//   model.layers.L.attn_norm.weight [d]
//   model.layers.L.attn.{q,k,v,a,b,g}_proj.weight [out, d]
//   model.layers.L.attn.{q,k,v}_conv1d.weight [C, 1, K]  (torch Conv1d depthwise; ours is [C, K])
//   model.layers.L.attn.A_log [HV], model.layers.L.attn.dt_bias [HV]
//   model.layers.L.attn.o_norm.weight [dv], model.layers.L.attn.o_proj.weight [d, HV*dv]
//   model.layers.L.mlp_norm.weight [d], model.layers.L.mlp.{gate,up,down}_proj.weight
//   model.norm.weight [d]
//   lm_head.weight [V, d]                     <- (alpha_out / m) * head (the output multiplier folded)
// fla has no input or output multiplier, so both are folded into the weights and the exported
// model computes our function with fla's equations. A tied head whose two multipliers differ
// cannot be one matrix in fla: it is exported untied. config.json's "gdn" block says what was
// folded and holds the full spec, so an import restores the parametrization exactly (weights
// divided by the folded multipliers).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "proto/gdn.pb.h"
#include "runtime/tensor.h"

namespace gdn {

// What an export did beyond renaming: one line per fact, for the user.
struct ExportReport {
  std::vector<std::string> notes;
};

// Writes out_dir/config.json and out_dir/model.safetensors from the full (unsharded) float32
// parameters of a model built from `spec`, by our names. `step` is recorded in the "gdn" block.
// Errors: a parameter missing or of the wrong shape (naming it), an unwritable directory.
absl::StatusOr<ExportReport> ExportModel(const ExperimentSpec& spec,
                                         const std::map<std::string, Tensor>& full, int64_t step,
                                         const std::string& out_dir);

struct ImportedModel {
  ExperimentSpec spec;  // model and parametrization reconstructed (other fields: the exported
                        // spec's, or defaults for a model from elsewhere)
  std::vector<std::pair<std::string, Tensor>> params;  // full tensors, by our names, model order
  std::vector<std::string> notes;
};

// Reads dir/config.json and dir/model.safetensors (validated: truncated files, offsets outside
// the file, missing tensors and wrong shapes are one-line errors naming the file and tensor).
// A model without a "gdn" block is taken as fla's: standard parametrization, multipliers 1.
absl::StatusOr<ImportedModel> ImportModel(const std::string& dir);

}  // namespace gdn
