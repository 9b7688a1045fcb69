// The end of each step's backward: tensor-parallel partial gradients summed over their group, and
// data-parallel gradients summed over the data-parallel group in buckets, each started as soon as
// the backward has finished its parameters, so the transfers overlap the rest of the backward.
// Optionally (ZeRO stage 1) the optimizer state is sharded over the data-parallel group: buckets
// are reduce-scattered instead of all-reduced, each rank updates only its shard of every bucket,
// and the updated values are all-gathered.
//
// Layout: the gradients and the values of all parameters live in flat buffers
// with the parameters in reverse order (the order the backward finishes them), cut into buckets of
// about `bucket_bytes` (a parameter never spans two buckets; one larger than that is a bucket of
// its own). Each bucket is padded to a multiple of the group size and split into equal contiguous
// chunks, chunk r owned by data-parallel rank r. Parameter gradients are views into the buffer, so
// zeroing, the norm and clipping are a few calls over it. Under ZeRO-1 the reduce-scatter leaves
// each rank's sums in place in its chunks and the all-gather fills the other chunks in place: the
// only per-rank memory is the optimizer state of the chunks (1/dp of it).
#pragma once

#include <cstdint>
#include <vector>

#include "model/parameter.h"
#include "runtime/communicator.h"

namespace gdn {

class GradientReducer {
 public:
  struct Options {
    int64_t bucket_bytes = 25 << 20;
    bool shard_optimizer = false;  // ZeRO stage 1
  };
  // Rebinds the gradients and values of `params` (keeping their contents) to views into the flat
  // buffers. tp/tp_comm: this rank's tensor-parallel place and group (partial gradients,
  // the norm); dp: the data-parallel group. Borrowed; they must outlive the reducer.
  GradientReducer(ParameterSet& params, const TensorParallel& tp, Communicator* tp_comm,
                  Communicator* dp, const Options& options);

  // The backward reports each parameter whose gradient is final for this step (after the last
  // micro-batch). Buckets whose parameters are all final start, in bucket order.
  void GradReady(const Parameter* p);
  // Starts the buckets not yet started (parameters never reported count as final) and waits for
  // all. Then every gradient holds the sum over both groups; under ZeRO-1 only this rank's chunks
  // (its segments, SegmentGrad) do.
  void Finish();

  // All gradients to zero (the start of a step).
  void ZeroGrads() const { flat_grad_.SetZero(); }
  // The global gradient norm, sqrt(sum of squared reduced gradients), each element once: a
  // tensor-parallel shard on its rank, a replicated parameter on tensor-parallel rank 0 only.
  double GradNorm() const;

  // The optimizer's view. A piece of a parameter that this rank updates: elements [offset,
  // offset + length) of the parameter's flat value, at `flat` in the flat buffers and at
  // shard_offset in the shard tensors (the optimizer state: under ZeRO-1 this rank's chunks of
  // every bucket, packed; else the flat layout itself, every parameter one segment).
  struct Segment {
    int param = 0;  // index in params.all()
    int64_t offset = 0, length = 0, flat = 0, shard_offset = 0;
  };
  bool sharded() const { return options_.shard_optimizer; }
  const std::vector<Segment>& segments() const { return segments_; }
  int64_t shard_size() const { return shard_size_; }
  // The flat buffers (every parameter's value and gradient are views into them).
  const Tensor& flat_values() const { return flat_value_; }
  const Tensor& flat_grads() const { return flat_grad_; }
  // A segment's reduced gradient (valid after Finish).
  Tensor SegmentGrad(const Segment& s) const { return flat_grad_.Rows(s.flat, s.flat + s.length); }
  // After the optimizer updated this rank's segments of the values: every rank gets every value.
  void GatherValues();
  // A shard-layout tensor of every rank, gathered into full per-parameter tensors (this rank's
  // local shapes; under ZeRO-1 collective over the data-parallel group), and the reverse cut.
  std::vector<Tensor> GatherShards(const Tensor& shard) const;
  void CopyToShard(const std::vector<Tensor>& full, const Tensor& shard) const;

  // Bucket sizes in bytes, in start order (benchmarks).
  std::vector<int64_t> BucketBytes() const;

 private:
  struct Bucket {
    int64_t begin = 0, size = 0;     // elements of the flat buffer, padded to the group size
    int64_t shard_offset = 0;        // of this rank's chunk in the shard tensors
    std::vector<int> params;         // indices in params.all()
    int waiting = 0;                 // parameters not yet final this step
  };
  void Start(Bucket& b);
  int64_t Chunk(const Bucket& b) const { return b.size / shard_group_; }
  // This rank's chunk of a bucket in a flat buffer.
  Tensor OwnChunk(const Tensor& flat, const Bucket& b) const {
    const int64_t begin = b.begin + shard_rank_ * Chunk(b);
    return flat.Rows(begin, begin + Chunk(b));
  }
  bool Counted(const Parameter& p) const;
  // Whether collectives run at all (several data-parallel ranks, or sharding).
  bool communicates() const { return dp_->size() > 1 || options_.shard_optimizer; }

  ParameterSet& params_;
  TensorParallel tp_;
  Communicator *tp_comm_, *dp_;
  Options options_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;      // per parameter
  std::vector<int64_t> flat_offset_;  // per parameter, in the flat buffers
  size_t next_start_ = 0;           // the next bucket to start
  bool reported_ = false;           // GradReady seen this step
  Tensor flat_grad_, flat_value_;
  // The optimizer state's layout: each bucket in shard_group_ chunks, this rank owning chunk
  // shard_rank_ (ZeRO-1: the data-parallel group; else a group of one, so the state's layout is
  // the flat buffers').
  int shard_group_ = 1, shard_rank_ = 0;
  std::vector<Segment> segments_;
  int64_t shard_size_ = 0;
};

}  // namespace gdn
