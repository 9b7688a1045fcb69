// The model's sizes, derived from a ModelSpec, with the checks that need them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/gdn.pb.h"
#include "runtime/tensor.h"

namespace gdn {

struct ModelDims {
  int64_t vocab = 0, width = 0, depth = 0;
  int64_t heads = 0, value_heads = 0;  // H and HV
  int64_t dk = 0, dv = 0;              // head sizes
  int64_t key_dim = 0, value_dim = 0;  // H * dk and HV * dv
  int64_t mlp_hidden = 0, conv_size = 0;
  double norm_eps = 1e-6;
  bool tied = false;
  double beta_scale = 1.0;  // 2 with negative eigenvalues
  int64_t chunk = 64;       // 0: the sequential recurrence
  bool heads_grow_in_size = false;  // head_scaling HEAD_SIZE: fixed head count, dk and dv grow
};

// Errors name the field, e.g. "model.width: key dimension 0.75 * 100 = 75 is not a multiple of
// model.head_dim 16".
absl::StatusOr<ModelDims> ResolveModelDims(const ModelSpec& spec);

// Checks of the whole spec that need the derived sizes, e.g. head counts divisible by the
// tensor-parallel size.
absl::Status ValidateModelSpec(const ExperimentSpec& spec);

// LanguageModel's layout without building it (tests/export_test.cc and
// tests/parametrization_test.cc check them against the built model), so that sizes and files can
// be checked before anything of their size is allocated.
// One layer's parameters by our names ("attn_norm", "attn.q_proj", ...) and full shapes, in model
// order.
std::vector<std::pair<std::string, Shape>> LayerParameterShapes(const ModelDims& d);
// Every parameter: "embedding", then "layers.<l>." + each layer's, "norm", and "lm_head" untied.
std::vector<std::pair<std::string, Shape>> ParameterShapes(const ModelDims& d);
// How many parameters, in double (any sizes, any depth, without listing the layers).
double ParameterCount(const ModelDims& d);
// 6 x the weights that multiply every token (the projections, "*_proj", and the head): the
// model's FLOPs per trained token in matrix products.
double MatmulFlopsPerToken(const ModelDims& d);

}  // namespace gdn
