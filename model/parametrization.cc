#include "model/parametrization.h"

#include <cmath>

namespace gdn {

const char* ParamClassName(ParamClass c) {
  switch (c) {
    case ParamClass::kInput: return "input";
    case ParamClass::kHidden: return "hidden";
    case ParamClass::kOutput: return "output";
    case ParamClass::kGateReadout: return "gate-readout";
    case ParamClass::kVector: return "vector";
    case ParamClass::kFixed: return "fixed";
  }
  return "?";
}

double WidthMultiplier(const ExperimentSpec& spec) {
  if (spec.parametrization().kind() == ParametrizationSpec::SP) return 1.0;
  return static_cast<double>(spec.model().width()) / spec.parametrization().base_width();
}

// The table (sigma = init_std, eta = lr, lambda = weight decay, m = width multiplier):
//
//   class   init std       forward         AdamW lr   SGD lr   weight decay (AdamW / SGD)
//   input   sigma          alpha_in        eta        eta*m    lambda   / lambda/m
//   hidden  sigma/sqrt(m)  1               eta/m      eta      lambda*m / lambda
//   output  sigma or 0     alpha_out/m     eta        eta*m    lambda   / lambda/m
//   gate-readout sigma/m   1               eta/m      eta/m    lambda*m / lambda*m
//   vector  sigma (conv)   1               eta        eta*m    0
//   fixed   (ones)         1               eta        eta      0
//
// The decay per step is lr * wd for both optimizers (decoupled for AdamW, L2 on the gradient for
// SGD), so the weight-decay multiplier is 1 / (lr multiplier): lr * wd stays width-independent.
// gate-readout is the output rule (init sigma, forward 1/m, AdamW lr eta, SGD lr eta*m) with the
// multiplier folded into init and lr, which gives the same updates of x Wa. As a hidden matrix
// under SGD (lr eta) a fan-in of m times more coordinates, all moved the same way, would move x Wa
// m times more per step.
// Vector-like parameters other than the conv weights have their own init (ones, A_log, dt_bias).
// Under SP, m = 1 everywhere, so muP at m = 1 is SP exactly.
ParamMultipliers MultipliersFor(ParamClass cls, const ParametrizationSpec& p,
                                OptimizerSpec::Kind optimizer, double m) {
  const bool adam = optimizer == OptimizerSpec::ADAMW;
  const double sigma = p.init_std();
  ParamMultipliers r;
  switch (cls) {
    case ParamClass::kInput:
      r = {sigma, p.alpha_in(), adam ? 1.0 : m, adam ? 1.0 : 1.0 / m};
      break;
    case ParamClass::kHidden:
      r = {sigma / std::sqrt(m), 1.0, adam ? 1.0 / m : 1.0, adam ? m : 1.0};
      break;
    case ParamClass::kOutput:
      r = {p.zero_init_readout() ? 0.0 : sigma, p.alpha_out() / m, adam ? 1.0 : m,
           adam ? 1.0 : 1.0 / m};
      break;
    case ParamClass::kGateReadout:
      r = {sigma / m, 1.0, 1.0 / m, m};
      break;
    case ParamClass::kVector:
      r = {sigma, 1.0, adam ? 1.0 : m, 0.0};
      break;
    case ParamClass::kFixed:
      r = {0.0, 1.0, 1.0, 0.0};
      break;
  }
  return r;
}

double RecurrenceScale(int64_t dk, bool heads_grow_in_size, double m) {
  return std::sqrt((heads_grow_in_size ? m : 1.0) / static_cast<double>(dk));
}

}  // namespace gdn
