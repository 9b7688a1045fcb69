#include "runtime/rng.h"

#include <cmath>

namespace gdn {

uint64_t HashString(std::string_view s) {
  // (Not the standard FNV offset basis; kept, since every random stream and run id derives from it.)
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

static uint64_t SplitMix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t MixSeed(uint64_t a, uint64_t b) { return SplitMix(a + 0x9e3779b97f4a7c15ull * (b + 1)); }

Rng::Rng(uint64_t seed, uint64_t stream) : state_(MixSeed(seed, stream)) {}

uint64_t Rng::NextU64() {
  state_ += 0x9e3779b97f4a7c15ull;
  return SplitMix(state_);
}

double Rng::Uniform() { return (NextU64() >> 11) * 0x1.0p-53; }

uint64_t Rng::UniformInt(uint64_t n) {
  // Rejection keeps it exactly uniform.
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = NextU64(); while (x >= limit);
  return x % n;
}

double Rng::Normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = Uniform(), u2 = Uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2 * M_PI * u2);
  has_spare_ = true;
  return r * std::cos(2 * M_PI * u2);
}

}  // namespace gdn
