#include "runtime/block_pool.h"

#include <algorithm>
#include <vector>

#include <glog/logging.h>

namespace gdn {

BlockPool::BlockPool(RawAlloc alloc, RawFree free) : alloc_(std::move(alloc)), free_fn_(std::move(free)) {}

BlockPool::~BlockPool() {
  Release();
  LOG_IF(WARNING, !blocks_.empty()) << "BlockPool destroyed with " << allocated_ << " bytes in use";
}

void BlockPool::InsertFree(Block* b) {
  b->free = true;
  FreeOf(b).emplace(b->size, b->ptr);
  cached_ += b->size;
}

void BlockPool::EraseFree(Block* b) {
  FreeOf(b).erase({b->size, b->ptr});
  cached_ -= b->size;
  b->free = false;
}

void* BlockPool::Get(size_t bytes) {
  const size_t size = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  const bool small = size <= kSmallMax;
  std::lock_guard<std::mutex> lock(mu_);
  FreeSet& set = small ? free_small_ : free_large_;
  Block* b = nullptr;
  auto it = set.lower_bound({size, nullptr});
  if (it != set.end()) {
    b = blocks_.at(it->second);
    EraseFree(b);
  } else {
    const size_t seg = small ? kSegmentRound : (size + kSegmentRound - 1) / kSegmentRound * kSegmentRound;
    char* p = static_cast<char*>(alloc_(seg));
    if (p == nullptr) return nullptr;
    b = new Block{p, seg, small, false, nullptr, nullptr};
    blocks_.emplace(p, b);
    ++segments_;
  }
  // Split off the rest when it is worth a block of its own: any rest in the small pool, at
  // least a small request's worth in the large pool (less stays inside this block).
  const size_t rest = b->size - size;
  if (rest >= (small ? kAlign : kSmallMax)) {
    Block* r = new Block{b->ptr + size, rest, small, false, b, b->next};
    if (b->next != nullptr) b->next->prev = r;
    b->next = r;
    b->size = size;
    blocks_.emplace(r->ptr, r);
    InsertFree(r);
  }
  allocated_ += b->size;
  peak_ = std::max(peak_, allocated_);
  return b->ptr;
}

void BlockPool::Put(void* p) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find(static_cast<char*>(p));
  CHECK(it != blocks_.end() && !it->second->free) << "BlockPool::Put of a pointer it did not hand out";
  Block* b = it->second;
  allocated_ -= b->size;
  // Merge with free neighbours: the block absorbs its next, its prev absorbs it.
  if (Block* n = b->next; n != nullptr && n->free) {
    EraseFree(n);
    b->size += n->size;
    b->next = n->next;
    if (n->next != nullptr) n->next->prev = b;
    blocks_.erase(n->ptr);
    delete n;
  }
  if (Block* q = b->prev; q != nullptr && q->free) {
    EraseFree(q);
    q->size += b->size;
    q->next = b->next;
    if (b->next != nullptr) b->next->prev = q;
    blocks_.erase(b->ptr);
    delete b;
    b = q;
  }
  InsertFree(b);
}

size_t BlockPool::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Block*> whole;  // free blocks that are a whole segment
  for (FreeSet* set : {&free_small_, &free_large_})
    for (const auto& [size, ptr] : *set) {
      Block* b = blocks_.at(ptr);
      if (b->prev == nullptr && b->next == nullptr) whole.push_back(b);
    }
  size_t released = 0;
  for (Block* b : whole) {
    EraseFree(b);
    released += b->size;
    blocks_.erase(b->ptr);
    free_fn_(b->ptr);
    delete b;
    --segments_;
  }
  return released;
}

size_t BlockPool::cached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_;
}
size_t BlockPool::allocated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_;
}
size_t BlockPool::peak() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
size_t BlockPool::segments() const {
  std::lock_guard<std::mutex> lock(mu_);
  return segments_;
}

}  // namespace gdn
