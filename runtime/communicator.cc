#include "runtime/communicator.h"

#include <cstdlib>

#include "absl/strings/numbers.h"

namespace gdn {

namespace {
class SingleRank : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(const Tensor&) override {}
  void AllReduceMax(const Tensor&) override {}
  void AllGather(const Tensor& in, const Tensor& out) override { CopyUnlessSame(in, out); }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override { CopyUnlessSame(in, out); }
  void Broadcast(const Tensor&, int root) override { CHECK_EQ(root, 0); }
  void Barrier() override {}

 private:
  static void CopyUnlessSame(const Tensor& from, const Tensor& to) {
    if (from.raw() != to.raw()) to.CopyFrom(from);
  }
};
class ByDevice : public Communicator {
 public:
  ByDevice(Communicator* host, std::unique_ptr<Communicator> device)
      : host_(host), device_(std::move(device)) {
    CHECK_EQ(host_->rank(), device_->rank());
    CHECK_EQ(host_->size(), device_->size());
  }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  void AllReduceSum(const Tensor& t) override { For(t).AllReduceSum(t); }
  void AllReduceMax(const Tensor& t) override { For(t).AllReduceMax(t); }
  void AllGather(const Tensor& in, const Tensor& out) override { For(in, out).AllGather(in, out); }
  void ReduceScatterSum(const Tensor& in, const Tensor& out) override {
    For(in, out).ReduceScatterSum(in, out);
  }
  void Broadcast(const Tensor& t, int root) override { For(t).Broadcast(t, root); }
  void Barrier() override { host_->Barrier(); }
  void StartAllReduceSum(const Tensor& t) override { For(t).StartAllReduceSum(t); }
  void StartReduceScatterSum(const Tensor& in, const Tensor& out) override {
    For(in, out).StartReduceScatterSum(in, out);
  }
  void StartAllGather(const Tensor& in, const Tensor& out) override {
    For(in, out).StartAllGather(in, out);
  }
  void WaitAsync() override {
    host_->WaitAsync();
    device_->WaitAsync();
  }
  void SetAsyncTiming(bool on) override { device_->SetAsyncTiming(on); }
  std::vector<double> TakeAsyncTimes() override { return device_->TakeAsyncTimes(); }

 private:
  Communicator& For(const Tensor& t) { return t.device() == Device::kCPU ? *host_ : *device_; }
  Communicator& For(const Tensor& in, const Tensor& out) {
    CHECK(in.device() == out.device()) << "a collective's input and output on different devices";
    return For(in);
  }

  Communicator* host_;
  std::unique_ptr<Communicator> device_;
};

}  // namespace

std::optional<double> CollectiveTimeoutFromEnv() {
  const char* v = std::getenv("GDN_COLLECTIVE_TIMEOUT_S");
  if (v == nullptr || *v == '\0') return kDefaultCollectiveTimeoutS;
  double s = 0;
  if (!absl::SimpleAtod(v, &s) || !(s > 0)) return std::nullopt;
  return s;
}

std::unique_ptr<Communicator> MakeSingleRankCommunicator() { return std::make_unique<SingleRank>(); }

std::unique_ptr<Communicator> MakeByDeviceCommunicator(Communicator* host,
                                                       std::unique_ptr<Communicator> device) {
  return std::make_unique<ByDevice>(host, std::move(device));
}

}  // namespace gdn
