// An in-process network between RaftHosts, for tests: delivers every message to the host it is
// addressed to, unless that node is cut off.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "libs/cluster/raft_host.h"

namespace herald::cluster {

class LocalNetwork {
 public:
  // The transport a node's host sends through.
  std::unique_ptr<Transport> TransportFor(raft::NodeId node);
  void Attach(raft::NodeId node, RaftHost* host);
  void Detach(raft::NodeId node);
  // A cut-off node neither sends nor receives.
  void CutOff(raft::NodeId node, bool cut);
  void Route(raft::NodeId from, GroupId group, raft::Message m, bool quiesce);
  // A node-level heartbeat: every other attached node hears from `from`.
  void Ping(raft::NodeId from);
  // Raft messages delivered so far (pings not counted).
  uint64_t routed();

 private:
  std::mutex mu_;
  std::map<raft::NodeId, RaftHost*> hosts_ ABSL_GUARDED_BY(mu_);
  std::set<raft::NodeId> cut_ ABSL_GUARDED_BY(mu_);
  uint64_t routed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace herald::cluster
