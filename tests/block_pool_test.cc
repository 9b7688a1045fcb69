// runtime/block_pool.h over malloc'd segments: best fit, splitting, merging, release, running out,
// and a random run checked against the pool's invariants (live blocks never overlap and lie in
// segments; cached + allocated = segment bytes).
#include "runtime/block_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <random>
#include <vector>

namespace gdn {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// Raw segments from aligned_alloc, with a byte budget (nullptr past it) and counters.
struct Raw {
  size_t budget = SIZE_MAX, held = 0, allocs = 0;
  std::map<char*, size_t> segments;
  BlockPool::RawAlloc Alloc() {
    return [this](size_t bytes) -> void* {
      if (held + bytes > budget) return nullptr;
      char* p = static_cast<char*>(std::aligned_alloc(BlockPool::kAlign, bytes));
      held += bytes;
      ++allocs;
      segments[p] = bytes;
      return p;
    };
  }
  BlockPool::RawFree Free() {
    return [this](void* p) {
      held -= segments.at(static_cast<char*>(p));
      segments.erase(static_cast<char*>(p));
      std::free(p);
    };
  }
};

TEST(BlockPoolTest, ReusesSplitsAndMerges) {
  Raw raw;
  BlockPool pool(raw.Alloc(), raw.Free());
  void* a = pool.Get(10 * kMiB);
  EXPECT_EQ(raw.allocs, 1u);
  EXPECT_EQ(pool.allocated(), 10 * kMiB);
  pool.Put(a);
  EXPECT_EQ(pool.cached(), 10 * kMiB);
  // Two smaller requests split the freed block: no new segment, no overlap.
  char* b = static_cast<char*>(pool.Get(4 * kMiB));
  char* c = static_cast<char*>(pool.Get(4 * kMiB + 1));
  EXPECT_EQ(raw.allocs, 1u);
  EXPECT_EQ(b, a);
  EXPECT_EQ(c, b + 4 * kMiB);
  EXPECT_EQ(pool.allocated(), 8 * kMiB + BlockPool::kAlign);
  EXPECT_EQ(pool.cached() + pool.allocated(), 10 * kMiB);
  // Freed, they merge back into one block that serves the whole size again.
  pool.Put(c);
  pool.Put(b);
  EXPECT_EQ(pool.Get(10 * kMiB), a);
  EXPECT_EQ(raw.allocs, 1u);
  EXPECT_EQ(pool.peak(), 10 * kMiB);
  pool.Put(a);
  // Best fit: of a free 5 and a free 3.5 MiB block (kept apart by a live one), a 3 MiB request
  // takes the 3.5, though the 5 comes first by address.
  const size_t half = 3 * kMiB / 2;
  char* five = static_cast<char*>(pool.Get(5 * kMiB));
  char* live1 = static_cast<char*>(pool.Get(half));
  // The last 3.5 MiB: the 0.5 MiB left is too little for a block of its own and stays inside.
  char* three = static_cast<char*>(pool.Get(3 * kMiB));
  EXPECT_EQ(five, a);
  EXPECT_EQ(three, five + 5 * kMiB + half);
  EXPECT_EQ(raw.allocs, 1u);  // all from the 10 MiB segment
  void* other = pool.Get(2 * kMiB);  // fits nowhere: a new segment
  EXPECT_EQ(raw.allocs, 2u);
  pool.Put(five);
  pool.Put(three);
  EXPECT_EQ(pool.cached(), 5 * kMiB + 7 * kMiB / 2);
  EXPECT_EQ(pool.Get(3 * kMiB), three);
  pool.Put(three);
  pool.Put(live1);
  pool.Put(other);
  EXPECT_EQ(pool.allocated(), 0u);
  EXPECT_EQ(pool.Release(), 12 * kMiB);
  EXPECT_EQ(raw.held, 0u);
  EXPECT_EQ(pool.segments(), 0u);
}

TEST(BlockPoolTest, SmallRequestsShareTwoMiBSegments) {
  Raw raw;
  BlockPool pool(raw.Alloc(), raw.Free());
  std::vector<void*> small;
  for (int i = 0; i < 1000; ++i) small.push_back(pool.Get(1000));  // 1024 bytes each
  EXPECT_EQ(raw.allocs, 1u);
  EXPECT_EQ(pool.allocated(), 1000u * 1024u);
  // A large request never takes small-pool memory.
  void* large = pool.Get(kMiB + 1);
  EXPECT_EQ(raw.allocs, 2u);
  EXPECT_EQ(pool.Release(), 0u);  // nothing wholly free
  for (void* p : small) pool.Put(p);
  EXPECT_EQ(pool.Release(), 2 * kMiB);
  pool.Put(large);
  EXPECT_EQ(pool.Release(), 2 * kMiB);
}

TEST(BlockPoolTest, RunningOutAndReleasing) {
  Raw raw;
  raw.budget = 8 * kMiB;
  BlockPool pool(raw.Alloc(), raw.Free());
  void* a = pool.Get(6 * kMiB);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(pool.Get(4 * kMiB), nullptr);  // past the budget
  pool.Put(a);
  void* small = pool.Get(100);  // holds a small segment: 8 MiB in all
  EXPECT_EQ(pool.Get(7 * kMiB), nullptr);  // the free 6 MiB block is too small, no room for more
  EXPECT_EQ(pool.Release(), 6 * kMiB);
  EXPECT_NE(pool.Get(5 * kMiB), nullptr);
  pool.Put(small);
}

TEST(BlockPoolDeathTest, PutOfAForeignPointerDies) {
  Raw raw;
  BlockPool pool(raw.Alloc(), raw.Free());
  int x = 0;
  EXPECT_DEATH(pool.Put(&x), "did not hand out");
  void* p = pool.Get(100);
  pool.Put(p);
  EXPECT_DEATH(pool.Put(p), "did not hand out");
}

TEST(BlockPoolTest, RandomRunKeepsInvariants) {
  Raw raw;
  BlockPool pool(raw.Alloc(), raw.Free());
  std::mt19937_64 gen(12345);
  std::map<char*, size_t> live;  // address -> requested bytes
  auto check = [&] {
    // Live blocks lie inside segments and never overlap.
    char* end = nullptr;
    for (const auto& [p, n] : live) {
      ASSERT_GE(p, end) << "overlapping blocks";
      auto seg = raw.segments.upper_bound(p);
      ASSERT_NE(seg, raw.segments.begin());
      --seg;
      ASSERT_LE(p + n, seg->first + seg->second) << "block past its segment";
      end = p + n;
    }
    size_t held = 0;
    for (const auto& [p, n] : raw.segments) held += n;
    ASSERT_EQ(pool.cached() + pool.allocated(), held);
    ASSERT_LE(pool.allocated(), pool.peak());
  };
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || gen() % 100 < 55) {
      // Sizes from 1 byte to 24 MiB, most of them small.
      const int kind = static_cast<int>(gen() % 3);
      const size_t n = kind == 0 ? 1 + gen() % 4096 : kind == 1 ? 1 + gen() % (2 * kMiB) : 1 + gen() % (24 * kMiB);
      char* p = static_cast<char*>(pool.Get(n));
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % BlockPool::kAlign, 0u);
      p[0] = 1;
      p[n - 1] = 1;
      live[p] = n;
    } else {
      auto it = live.begin();
      std::advance(it, gen() % live.size());
      pool.Put(it->first);
      live.erase(it);
    }
    if (step % 500 == 0) {
      check();
      if (step % 5000 == 0) pool.Release();
    }
  }
  check();
  for (const auto& [p, n] : live) pool.Put(p);
  EXPECT_EQ(pool.allocated(), 0u);
  pool.Release();
  EXPECT_EQ(raw.held, 0u);
}

}  // namespace
}  // namespace gdn
