#include "runtime/communicator.h"

namespace gdn {

namespace {
class SingleRank : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(const Tensor&) override {}
  void AllReduceMax(const Tensor&) override {}
  void AllGather(const Tensor& in, const Tensor& out) override { out.CopyFrom(in); }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override { out.CopyFrom(in); }
  void Broadcast(const Tensor&, int root) override { CHECK_EQ(root, 0); }
  void Barrier() override {}
};
}  // namespace

std::unique_ptr<Communicator> MakeSingleRankCommunicator() { return std::make_unique<SingleRank>(); }

}  // namespace gdn
