// A caching allocator over segments from a raw allocator (cudaMalloc for device memory; any
// function in tests). Freed blocks stay cached; a request takes the smallest cached block that
// fits (best fit) and splits off the rest, and a freed block merges with its free neighbours in
// its segment. Unlike a cache keyed by exact size, memory freed by one kind of buffer (the forward's
// saved activations) serves another (the backward's temporaries), so what is held stays close to
// the most that was ever in use at once.
//
// Requests up to 1 MiB come from 2 MiB segments of their own, so that small buffers never pin a
// large segment; larger requests get a segment of their size rounded up to 2 MiB. Sizes are
// rounded up to 512 bytes (every block is 512-byte aligned when segments are). Thread-safe.
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace gdn {

class BlockPool {
 public:
  // alloc returns nullptr when out of memory; free takes what alloc returned.
  using RawAlloc = std::function<void*(size_t)>;
  using RawFree = std::function<void(void*)>;
  BlockPool(RawAlloc alloc, RawFree free);
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;
  ~BlockPool();  // returns every segment (the caller must have put back every block)

  static constexpr size_t kAlign = 512;
  static constexpr size_t kSmallMax = size_t{1} << 20;      // requests up to this are "small"
  static constexpr size_t kSegmentRound = size_t{2} << 20;  // segment sizes are multiples of this

  // A block of at least `bytes` (one of 512 for 0), or nullptr when alloc fails; the pool never
  // releases by itself (the caller decides when waiting for queued work is worth it: Release).
  void* Get(size_t bytes);
  // Gives back a block from Get.
  void Put(void* p);
  // Returns every wholly free segment to the raw allocator; the bytes returned.
  size_t Release();

  size_t cached() const;     // bytes in free blocks
  size_t allocated() const;  // bytes in blocks handed out (as rounded)
  size_t peak() const;       // the most bytes handed out at once
  size_t segments() const;   // segments held

 private:
  struct Block {
    char* ptr;
    size_t size;
    bool small;  // from the small pool
    bool free;
    Block* prev;  // neighbours in the same segment, by address
    Block* next;
  };
  using FreeSet = std::set<std::pair<size_t, char*>>;  // (size, address): best fit first
  FreeSet& FreeOf(const Block* b) { return b->small ? free_small_ : free_large_; }
  void InsertFree(Block* b);
  void EraseFree(Block* b);

  RawAlloc alloc_;
  RawFree free_fn_;
  mutable std::mutex mu_;
  FreeSet free_small_, free_large_;
  std::unordered_map<char*, Block*> blocks_;  // every block, free or not, by address
  size_t cached_ = 0, allocated_ = 0, peak_ = 0, segments_ = 0;
};

}  // namespace gdn
