// Helpers shared by the model tests.
#pragma once

#include <cstdint>
#include <random>

#include "runtime/tensor.h"

namespace gdn {

// int32 [B, T1] tokens in [0, vocab) from a fixed seed.
inline Tensor RandomTokens(int64_t B, int64_t T1, int64_t vocab, uint64_t seed) {
  Tensor t = Tensor::Empty({B, T1}, DType::kI32);
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> dist(0, static_cast<int>(vocab) - 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = dist(gen);
  return t;
}

}  // namespace gdn
