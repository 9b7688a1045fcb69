#include "model/gradient_reducer.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace gdn {

namespace {
// A parameter's flat view.
Tensor Flat(const Tensor& t) { return t.View({t.numel()}); }
}  // namespace

GradientReducer::GradientReducer(ParameterSet& params, const TensorParallel& tp,
                                 Communicator* tp_comm, Communicator* dp, const Options& options)
    : params_(params), tp_(tp), tp_comm_(tp_comm), dp_(dp), options_(options) {
  CHECK(dp_ != nullptr);
  const auto& all = params_.all();
  bucket_of_.assign(all.size(), -1);
  flat_offset_.assign(all.size(), 0);
  CHECK(!all.empty());
  const DType dtype = all[0]->value.dtype();
  const Device device = all[0]->value.device();
  const int64_t elem = static_cast<int64_t>(DTypeSize(dtype));
  const int64_t bucket_elems = std::max<int64_t>(1, options_.bucket_bytes / elem);
  const int64_t group = dp_->size();
  shard_group_ = options_.shard_optimizer ? dp_->size() : 1;
  shard_rank_ = options_.shard_optimizer ? dp_->rank() : 0;

  // Buckets in the backward's order: the parameters reversed, a bucket closed before it overflows.
  int64_t filled = 0;
  for (int i = static_cast<int>(all.size()) - 1; i >= 0; --i) {
    CHECK(all[i]->value.dtype() == dtype && all[i]->value.device() == device);
    const int64_t n = all[i]->value.numel();
    if (buckets_.empty() || (filled > 0 && filled + n > bucket_elems)) {
      buckets_.emplace_back();
      filled = 0;
    }
    buckets_.back().params.push_back(i);
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
    filled += n;
  }
  int64_t begin = 0;
  for (Bucket& b : buckets_) {
    b.begin = begin;
    int64_t at = begin;
    for (int i : b.params) {
      flat_offset_[i] = at;
      at += all[i]->value.numel();
    }
    b.size = (at - begin + group - 1) / group * group;
    b.shard_offset = shard_size_;
    shard_size_ += b.size / shard_group_;
    b.waiting = static_cast<int>(b.params.size());
    begin += b.size;
  }

  // The flat buffers; the parameters' tensors become views into them, keeping their contents.
  flat_grad_ = Tensor::Zeros({begin}, dtype, device);
  flat_value_ = Tensor::Zeros({begin}, dtype, device);
  for (size_t i = 0; i < all.size(); ++i) {
    Parameter& p = *all[i];
    const int64_t n = p.value.numel();
    for (auto [flat, t] : {std::pair{&flat_grad_, &p.grad}, {&flat_value_, &p.value}}) {
      Tensor view = flat->Rows(flat_offset_[i], flat_offset_[i] + n).View(t->shape());
      view.CopyFrom(*t);
      *t = view;
    }
  }

  // This rank's chunk of each bucket (unsharded: the whole bucket), cut at parameter boundaries.
  for (const Bucket& b : buckets_) {
    const int64_t own_begin = b.begin + shard_rank_ * Chunk(b), own_end = own_begin + Chunk(b);
    for (int i : b.params) {
      const int64_t p_begin = flat_offset_[i], p_end = p_begin + all[i]->value.numel();
      const int64_t lo = std::max(own_begin, p_begin), hi = std::min(own_end, p_end);
      if (lo < hi)
        segments_.push_back({i, lo - p_begin, hi - lo, lo, b.shard_offset + lo - own_begin});
    }
  }
}

void GradientReducer::GradReady(const Parameter* p) {
  const auto& all = params_.all();
  const auto it = std::find_if(all.begin(), all.end(), [&](const auto& q) { return q.get() == p; });
  CHECK(it != all.end()) << p->name << " is not a parameter of this model";
  const int i = static_cast<int>(it - all.begin());
  reported_ = true;
  // A replicated parameter inside the tensor-parallel region holds only its heads' part.
  if (p->tp_partial_grad && tp_comm_ != nullptr && tp_.size > 1) tp_comm_->AllReduceSum(p->grad);
  Bucket& b = buckets_[bucket_of_[i]];
  CHECK_GT(b.waiting, 0) << p->name << ": reported twice in one step";
  --b.waiting;
  while (next_start_ < buckets_.size() && buckets_[next_start_].waiting == 0)
    Start(buckets_[next_start_++]);
}

void GradientReducer::Start(Bucket& b) {
  if (!communicates()) return;
  const Tensor whole = flat_grad_.Rows(b.begin, b.begin + b.size);
  if (options_.shard_optimizer)
    dp_->StartReduceScatterSum(whole, OwnChunk(flat_grad_, b));  // in place
  else
    dp_->StartAllReduceSum(whole);
}

void GradientReducer::Finish() {
  const auto& all = params_.all();
  if (!reported_) {
    // Nothing was reported (a backward without hooks): every parameter is final now.
    for (const auto& p : all) GradReady(p.get());
  } else {
    for (Bucket& b : buckets_) CHECK_EQ(b.waiting, 0) << "a parameter's gradient was never reported";
  }
  CHECK_EQ(next_start_, buckets_.size());
  if (communicates()) dp_->WaitAsync();
  for (Bucket& b : buckets_) b.waiting = static_cast<int>(b.params.size());
  next_start_ = 0;
  reported_ = false;
}

bool GradientReducer::Counted(const Parameter& p) const {
  return p.shard != ShardDim::kReplicated || tp_.rank == 0;
}

double GradientReducer::GradNorm() const {
  // The reduced gradients this rank holds (all of them, or under ZeRO-1 its chunks), without the
  // replicated parameters that another tensor-parallel rank counts; padding adds zeros.
  double sum = 0;
  if (options_.shard_optimizer) {
    for (const Bucket& b : buckets_) sum += ops::SumSquares(OwnChunk(flat_grad_, b));
    for (const Segment& s : segments_)
      if (!Counted(*params_.all()[s.param])) sum -= ops::SumSquares(SegmentGrad(s));
  } else {
    sum = ops::SumSquares(flat_grad_);
    for (const auto& p : params_.all())
      if (!Counted(*p)) sum -= ops::SumSquares(p->grad);
  }
  Tensor ss = Tensor::Zeros({1}, DType::kF64);
  ss.set(0, std::max(0.0, sum));
  if (options_.shard_optimizer) dp_->AllReduceSum(ss);
  if (tp_comm_ != nullptr && tp_.size > 1) tp_comm_->AllReduceSum(ss);
  return std::sqrt(ss.at(0));
}

void GradientReducer::GatherValues() {
  if (!options_.shard_optimizer) return;
  for (const Bucket& b : buckets_)  // in place: this rank's chunk is its part of the result
    dp_->StartAllGather(OwnChunk(flat_value_, b), flat_value_.Rows(b.begin, b.begin + b.size));
  dp_->WaitAsync();
}

std::vector<Tensor> GradientReducer::GatherShards(const Tensor& shard) const {
  CHECK_EQ(shard.numel(), shard_size_);
  // Unsharded, the shard layout is the flat layout: nothing to gather.
  Tensor flat = shard;
  if (options_.shard_optimizer) {
    flat = Tensor::Zeros({flat_grad_.numel()}, shard.dtype(), shard.device());
    for (const Bucket& b : buckets_)
      dp_->AllGather(shard.Rows(b.shard_offset, b.shard_offset + Chunk(b)),
                     flat.Rows(b.begin, b.begin + b.size));
  }
  std::vector<Tensor> full;
  for (size_t i = 0; i < params_.all().size(); ++i) {
    const Tensor& v = params_.all()[i]->value;
    full.push_back(flat.Rows(flat_offset_[i], flat_offset_[i] + v.numel()).View(v.shape()));
  }
  return full;
}

void GradientReducer::CopyToShard(const std::vector<Tensor>& full, const Tensor& shard) const {
  CHECK_EQ(full.size(), params_.all().size());
  for (const Segment& s : segments_)
    shard.Rows(s.shard_offset, s.shard_offset + s.length)
        .CopyFrom(Flat(full[s.param]).Rows(s.offset, s.offset + s.length));
}

std::vector<int64_t> GradientReducer::BucketBytes() const {
  std::vector<int64_t> bytes;
  for (const Bucket& b : buckets_) bytes.push_back(b.size * DTypeSize(flat_grad_.dtype()));
  return bytes;
}

}  // namespace gdn
