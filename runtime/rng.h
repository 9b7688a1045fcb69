// Deterministic random numbers. Every stream is a pure function of (seed, stream id), so a
// parameter's initial values, a step's batch, or a dropout mask never depend on the order in
// which other streams were used, on the number of ranks, or on a resume.
#pragma once

#include <cstdint>
#include <string_view>

namespace gdn {

// 64-bit FNV-1a of a string: stream ids from names (e.g. a parameter's name).
uint64_t HashString(std::string_view s);
// Combines two 64-bit values into one well-mixed value (splitmix64 finaliser).
uint64_t MixSeed(uint64_t a, uint64_t b);

class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0);
  uint64_t NextU64();
  // Uniform in [0, 1).
  double Uniform();
  // Uniform integer in [0, n).
  uint64_t UniformInt(uint64_t n);
  // Standard normal (Box-Muller).
  double Normal();

 private:
  uint64_t state_;
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace gdn
