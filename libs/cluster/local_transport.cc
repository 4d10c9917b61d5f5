#include "libs/cluster/local_transport.h"

namespace herald::cluster {
namespace {

class LocalTransport : public Transport {
 public:
  LocalTransport(LocalNetwork& net, raft::NodeId self) : net_(net), self_(self) {}
  void Send(GroupId group, raft::Message message) override {
    out_.emplace_back(group, std::move(message));
  }
  void Flush() override {
    auto out = std::move(out_);
    out_.clear();
    for (auto& [g, m] : out) net_.Route(self_, g, std::move(m));
  }

 private:
  LocalNetwork& net_;
  raft::NodeId self_;
  std::vector<std::pair<GroupId, raft::Message>> out_;
};

}  // namespace

std::unique_ptr<Transport> LocalNetwork::TransportFor(raft::NodeId node) {
  return std::make_unique<LocalTransport>(*this, node);
}

void LocalNetwork::Attach(raft::NodeId node, RaftHost* host) {
  std::lock_guard<std::mutex> l(mu_);
  hosts_[node] = host;
}

void LocalNetwork::Detach(raft::NodeId node) {
  std::lock_guard<std::mutex> l(mu_);
  hosts_.erase(node);
}

void LocalNetwork::CutOff(raft::NodeId node, bool cut) {
  std::lock_guard<std::mutex> l(mu_);
  if (cut) {
    cut_.insert(node);
  } else {
    cut_.erase(node);
  }
}

void LocalNetwork::Route(raft::NodeId from, GroupId group, raft::Message m) {
  // Deliver only queues under the target's own lock, and a host never calls into the network
  // while holding that lock, so holding ours across it is safe; it keeps the target alive
  // (Detach waits for it) while we deliver.
  std::lock_guard<std::mutex> l(mu_);
  if (cut_.count(from) != 0 || cut_.count(m.to) != 0) return;
  auto it = hosts_.find(m.to);
  if (it == hosts_.end()) return;
  it->second->Deliver(group, std::move(m));
}

}  // namespace herald::cluster
