#include "libs/cluster/local_transport.h"

namespace herald::cluster {
namespace {

class LocalTransport : public Transport {
 public:
  LocalTransport(LocalNetwork& net, raft::NodeId self) : net_(net), self_(self) {}
  void Send(GroupId group, raft::Message message) override {
    out_.push_back({group, std::move(message), false});
  }
  void SendQuiesce(GroupId group, raft::Message heartbeat) override {
    out_.push_back({group, std::move(heartbeat), true});
  }
  void Flush() override {
    auto out = std::move(out_);
    out_.clear();
    for (auto& o : out) net_.Route(self_, o.group, std::move(o.message), o.quiesce);
  }
  void Tick() override {
    Flush();
    net_.Ping(self_);
  }

 private:
  struct Out {
    GroupId group;
    raft::Message message;
    bool quiesce;
  };
  LocalNetwork& net_;
  raft::NodeId self_;
  std::vector<Out> out_;
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

void LocalNetwork::Route(raft::NodeId from, GroupId group, raft::Message m, bool quiesce) {
  // Deliver only queues under the target's own lock, and a host never calls into the network
  // while holding that lock, so holding ours across it is safe; it keeps the target alive
  // (Detach waits for it) while we deliver.
  std::lock_guard<std::mutex> l(mu_);
  if (cut_.count(from) != 0 || cut_.count(m.to) != 0) return;
  auto it = hosts_.find(m.to);
  if (it == hosts_.end()) return;
  ++routed_;
  it->second->HeardFrom(from);
  it->second->Deliver(group, std::move(m), quiesce);
}

void LocalNetwork::Ping(raft::NodeId from) {
  std::lock_guard<std::mutex> l(mu_);
  if (cut_.count(from) != 0) return;
  for (auto& [id, host] : hosts_) {
    if (id != from && cut_.count(id) == 0) host->HeardFrom(from);
  }
}

uint64_t LocalNetwork::routed() {
  std::lock_guard<std::mutex> l(mu_);
  return routed_;
}

}  // namespace herald::cluster
