// Test helpers shared by the Raft unit tests: a node with its MemoryStorage, a host loop that
// follows the host contract, and a tiny synchronous network.
#ifndef HERALD_LIBS_RAFT_RAFT_TEST_UTIL_H_
#define HERALD_LIBS_RAFT_RAFT_TEST_UTIL_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "libs/raft/node.h"
#include "libs/raft/storage.h"

namespace herald::raft::testing {

struct TestNode {
  std::unique_ptr<MemoryStorage> storage;
  std::unique_ptr<Node> node;
  std::vector<Entry> applied;
  std::vector<ReadState> read_states;
  Snapshot installed;

  // One host pass (persist, collect messages, apply, advance). Returns the messages to send.
  std::vector<Message> Process() {
    std::vector<Message> out;
    while (node->HasReady()) {
      Ready rd = node->GetReady();
      if (!rd.snapshot.IsEmpty()) {
        EXPECT_TRUE(storage->ApplySnapshot(rd.snapshot).ok());
        installed = rd.snapshot;
      }
      EXPECT_TRUE(storage->Append(rd.entries).ok());
      if (rd.hard_state) storage->SetHardState(*rd.hard_state);
      for (Message& m : rd.messages) out.push_back(std::move(m));
      for (Entry& e : rd.committed_entries) applied.push_back(e);
      for (ReadState& r : rd.read_states) read_states.push_back(r);
      node->Advance(rd);
    }
    return out;
  }
};

inline Config TestConfig(NodeId id, const Storage* storage) {
  Config c;
  c.id = id;
  c.storage = storage;
  c.election_tick = 10;
  c.heartbeat_tick = 1;
  c.pre_vote = false;
  c.check_quorum = false;
  c.random_seed = 42;
  return c;
}

// A founding member of a group with `voters` (and `learners`).
inline TestNode MakeNode(NodeId id, std::vector<NodeId> voters, std::vector<NodeId> learners = {},
                         std::function<void(Config&)> tweak = nullptr) {
  TestNode t;
  t.storage = std::make_unique<MemoryStorage>();
  ConfState cs{std::move(voters), std::move(learners)};
  EXPECT_TRUE(t.storage->ApplySnapshot(MemoryStorage::BootstrapSnapshot(cs)).ok());
  Config c = TestConfig(id, t.storage.get());
  if (tweak) tweak(c);
  auto n = Node::Create(c);
  EXPECT_TRUE(n.ok()) << n.status();
  t.node = std::move(*n);
  return t;
}

// Nodes connected by a synchronous network with an optional drop filter.
class Cluster {
 public:
  explicit Cluster(int n, std::function<void(Config&)> tweak = nullptr) {
    std::vector<NodeId> ids;
    for (int i = 1; i <= n; ++i) ids.push_back(i);
    for (NodeId id : ids) nodes_[id] = MakeNode(id, ids, {}, tweak);
  }

  TestNode& operator[](NodeId id) { return nodes_.at(id); }
  Node& node(NodeId id) { return *nodes_.at(id).node; }
  std::map<NodeId, TestNode>& nodes() { return nodes_; }

  // Drops every message for which this returns true.
  std::function<bool(const Message&)> drop;
  std::vector<Message> delivered;  // log of everything delivered

  // Delivers messages until the cluster is quiet.
  void Stabilize() {
    for (int round = 0; round < 10000; ++round) {
      std::vector<Message> msgs;
      for (auto& [id, t] : nodes_) {
        for (Message& m : t.Process()) msgs.push_back(std::move(m));
      }
      if (msgs.empty()) return;
      for (Message& m : msgs) {
        if (drop && drop(m)) continue;
        auto it = nodes_.find(m.to);
        if (it == nodes_.end()) continue;
        delivered.push_back(m);
        (void)it->second.node->Step(std::move(m));
      }
    }
    ADD_FAILURE() << "cluster did not stabilize";
  }

  // Makes `id` campaign (without waiting for a timeout) and settles.
  void Elect(NodeId id) {
    Message m;
    m.type = MessageType::kTimeoutNow;
    m.from = id;
    m.to = id;
    m.term = node(id).term();
    (void)node(id).Step(m);
    Stabilize();
  }

  void TickAll(int n) {
    for (int i = 0; i < n; ++i) {
      for (auto& [id, t] : nodes_) t.node->Tick();
      Stabilize();
    }
  }

 private:
  std::map<NodeId, TestNode> nodes_;
};

}  // namespace herald::raft::testing

#endif  // HERALD_LIBS_RAFT_RAFT_TEST_UTIL_H_
