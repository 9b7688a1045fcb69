// Standard parametrization and muP: ONE table (parametrization.cc) maps each parameter's class to
// its init std, forward multiplier, learning-rate multiplier and weight-decay multiplier.
// Everything is computed from global (unsharded) sizes, never from a tensor-parallel shard.
#pragma once

#include <cstdint>

#include "proto/gdn.pb.h"

namespace gdn {

// How a parameter's shape relates to the width (shared/docs/mup.md).
enum class ParamClass {
  kInput,   // token embedding: maps a fixed vocabulary to the width
  kHidden,  // width -> width matrices (Wq, Wk, Wv, Wg, Wo, MLP; Wa, Wb when heads grow in count)
  kOutput,  // LM head: width -> fixed vocabulary
  // Width -> a fixed number of outputs inside a layer: Wa, Wb when the heads grow in size (their
  // count is fixed). Readout-like, scaled by init and lr instead of a forward multiplier.
  kGateReadout,
  kVector,  // one width-sized dimension: norm weights, conv weights (and, when heads grow in
            // count, A_log, dt_bias; when they grow in size, the per-head output norm weight)
  kFixed,   // no width-sized dimension: the per-head output norm weight (size dv) when heads grow
            // in count; A_log, dt_bias when they grow in size
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

// The gated delta rule's output scale (on q). fla's dk^-1/2; under muP with heads growing in size,
// dk_base^-1/2 = sqrt(m / dk): q and k are unit vectors, so once they align q.k is O(1) at any dk and
// dk^-1/2 would shrink the recurrent output as the head grows (muP's 1/d attention rule, for unit
// vectors). m is 1 under SP and when heads grow in count (dk fixed), so this is fla's scale there.
double RecurrenceScale(int64_t dk, bool heads_grow_in_size, double m);

}  // namespace gdn
