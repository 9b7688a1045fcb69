// Standard parametrization and muP: ONE table (parametrization.cc) maps each parameter's class to
// its init std, forward multiplier, learning-rate multiplier and weight-decay multiplier.
// Everything is computed from global (unsharded) sizes, never from a tensor-parallel shard.
#pragma once

#include "proto/gdn.pb.h"

namespace gdn {

// How a parameter's shape relates to the width (shared/docs/mup.md).
enum class ParamClass {
  kInput,   // token embedding: maps a fixed vocabulary to the width
  kHidden,  // width -> width matrices (Wq, Wk, Wv, Wa, Wb, Wg, Wo, MLP)
  kOutput,  // LM head: width -> fixed vocabulary
  kVector,  // one width-sized dimension: norm weights, conv weights, A_log, dt_bias
  kFixed,   // no width-sized dimension: the per-head output norm weight (size dv)
};
const char* ParamClassName(ParamClass c);

struct ParamMultipliers {
  double init_std = 0;      // std of the N(0, std^2) init (for normally initialised parameters)
  double forward = 1;       // multiplies the parameter's output in the forward pass
  double lr = 1;            // multiplies the base learning rate eta
  double weight_decay = 1;  // multiplies the base weight decay lambda
};

// m = width / base_width under muP; 1 under SP (where only the real sizes change).
double WidthMultiplier(const ExperimentSpec& spec);

ParamMultipliers MultipliersFor(ParamClass cls, const ParametrizationSpec& p,
                                OptimizerSpec::Kind optimizer, double m);

}  // namespace gdn
