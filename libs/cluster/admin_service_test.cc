#include "libs/cluster/admin_service.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/cluster/core_node.h"
#include "libs/cluster/local_transport.h"

namespace herald::cluster {
namespace {

using namespace std::chrono_literals;

// Four nodes, four partitions, three replicas each: partition p lives on the nodes that follow
// position p, so node 1 hosts partitions 0, 2 and 3 but not 1 (voters 2, 3, 4).
constexpr int kNodes = 4;
constexpr uint32_t kPartitions = 4;

// One node: its database, Raft host and Admin service behind an in-process gRPC server.
struct TestNode {
  std::unique_ptr<storage::Engine> engine;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<RaftHost> host;
  std::unique_ptr<AdminService> admin;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Admin::Stub> stub;
};

// Addresses the services put in leader hints (nothing listens there; the tests only read them).
std::string HintAddress(raft::NodeId id) { return "10.0.0." + std::to_string(id) + ":7070"; }

class AdminServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-admin-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    std::map<raft::NodeId, std::string> addresses;
    std::vector<raft::NodeId> ids;
    for (raft::NodeId id = 1; id <= kNodes; ++id) {
      addresses[id] = HintAddress(id);
      ids.push_back(id);
    }
    for (raft::NodeId id = 1; id <= kNodes; ++id) {
      TestNode& n = nodes_[id];
      auto e = storage::Engine::Open({.path = root_ + "/node" + std::to_string(id)});
      ASSERT_TRUE(e.ok()) << e.status();
      n.engine = std::move(*e);
      n.transport = net_.TransportFor(id);
      RaftHostOptions o;
      o.node_id = id;
      o.tick = 10ms;
      n.host = std::make_unique<RaftHost>(*n.engine, *n.transport, o);
      for (uint32_t p = 0; p < kPartitions; ++p) {
        auto voters = PlaceReplicas(p, ids, 3);
        if (std::find(voters.begin(), voters.end(), id) == voters.end()) continue;
        ASSERT_TRUE(n.host->AddPartitionGroup(GroupForPartition(p), p, voters).ok());
      }
      net_.Attach(id, n.host.get());
      ASSERT_TRUE(n.host->Start().ok());
      AdminServiceOptions ao;
      ao.node_id = id;
      ao.cluster_id = "test";
      ao.partition_count = kPartitions;
      ao.replication_factor = 3;
      ao.directory = std::make_shared<NodeDirectory>(addresses);
      n.admin = std::make_unique<AdminService>(*n.host, ao);
      grpc::ServerBuilder b;
      int port = 0;
      b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      b.RegisterService(n.admin.get());
      n.server = b.BuildAndStart();
      ASSERT_NE(port, 0);
      n.stub = v1::Admin::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
    }
  }

  void TearDown() override {
    for (auto& [id, n] : nodes_) {
      if (n.server) n.server->Shutdown(std::chrono::system_clock::now() + 1s);
      net_.Detach(id);
      if (n.host) n.host->Stop();
    }
    nodes_.clear();
    std::filesystem::remove_all(root_);
  }

  // The leader of `partition` once its replicas agree on one.
  raft::NodeId WaitForLeader(uint32_t partition) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      for (auto& [id, n] : nodes_) {
        for (const GroupStatus& s : n.host->Status()) {
          if (s.partition == partition && s.role == raft::Role::kLeader) return id;
        }
      }
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }

  static std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout = 5s) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    return ctx;
  }

  static v1::ErrorInfo InfoOf(const grpc::Status& st) {
    v1::ErrorInfo info;
    EXPECT_TRUE(info.ParseFromString(st.error_details())) << st.error_message();
    return info;
  }

  std::string root_;
  LocalNetwork net_;
  std::map<raft::NodeId, TestNode> nodes_;
};

TEST_F(AdminServiceTest, LocalOnlyListsThePartitionsHostedHere) {
  for (uint32_t p = 0; p < kPartitions; ++p) ASSERT_NE(WaitForLeader(p), 0u);
  v1::ListPartitionsResponse all;
  v1::ListPartitionsRequest local;
  local.set_local_only(true);
  ASSERT_TRUE(nodes_[1].stub->ListPartitions(Context().get(), local, &all).ok());
  std::vector<uint32_t> listed;
  for (const auto& ps : all.partitions()) listed.push_back(ps.info().partition());
  EXPECT_EQ(listed, (std::vector<uint32_t>{0, 2, 3}));
  EXPECT_EQ(all.partitions(0).replicas_size(), 3);
  EXPECT_FALSE(all.partitions(0).has_error());
  // A partition's leader reports how far each replica has the log; a follower does not know (0).
  bool reported = false;
  for (int i = 0; i < 200 && !reported; ++i) {
    const raft::NodeId leader = WaitForLeader(0);
    ASSERT_NE(leader, 0u);
    v1::ListPartitionsResponse mine;
    ASSERT_TRUE(nodes_[leader].stub->ListPartitions(Context().get(), local, &mine).ok());
    for (const auto& ps : mine.partitions()) {
      if (ps.info().partition() != 0 || ps.info().leader_node_id() != leader) continue;
      bool all = ps.replicas_size() == 3 && ps.commit_index() > 0;
      for (const auto& r : ps.replicas()) {
        all = all && r.match_index() >= ps.commit_index();
        EXPECT_LE(r.match_index(), ps.commit_index() + 1000) << "node " << r.node_id();
      }
      if (!all) continue;
      reported = true;
      for (uint64_t follower : ps.info().voters()) {
        if (follower == leader) continue;
        v1::ListPartitionsResponse theirs;
        ASSERT_TRUE(nodes_[follower].stub->ListPartitions(Context().get(), local, &theirs).ok());
        for (const auto& fps : theirs.partitions()) {
          if (fps.info().partition() != 0) continue;
          for (const auto& r : fps.replicas()) {
            EXPECT_EQ(r.match_index(), 0u) << "follower " << follower << " about " << r.node_id();
          }
        }
      }
    }
    if (!reported) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(reported) << "partition 0's leader never reported every replica's match index";

  // Asked for by id (cluster-wide), a partition no reachable node answered for comes back with
  // its placement and an error (the other nodes' addresses are not reachable in this test).
  v1::ListPartitionsRequest req;
  req.add_partitions(1);
  v1::ListPartitionsResponse one;
  ASSERT_TRUE(nodes_[1].stub->ListPartitions(Context().get(), req, &one).ok());
  ASSERT_EQ(one.partitions_size(), 1);
  EXPECT_EQ(one.partitions(0).error().code(), v1::ERROR_CODE_PARTITION_UNAVAILABLE);
  EXPECT_EQ(std::vector<uint64_t>(one.partitions(0).info().voters().begin(),
                                  one.partitions(0).info().voters().end()),
            (std::vector<uint64_t>{2, 3, 4}));
}

TEST_F(AdminServiceTest, ClusterStatusCountsReplicasAndLeadersOfTheNodesThatAnswered) {
  for (uint32_t p = 0; p < kPartitions; ++p) ASSERT_NE(WaitForLeader(p), 0u);
  // Node 1 learns each hosted partition's leader from its first append.
  v1::GetClusterStatusResponse st;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  do {
    st.Clear();
    ASSERT_TRUE(nodes_[1].stub->GetClusterStatus(Context().get(), {}, &st).ok());
  } while (st.partitions_without_leader() > 1 && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(st.answered_by_node_id(), 1u);
  EXPECT_EQ(st.metadata().cluster_id(), "test");
  EXPECT_EQ(st.metadata().partition_count(), kPartitions);
  EXPECT_EQ(st.replication_factor(), 3u);
  ASSERT_EQ(st.metadata().nodes_size(), kNodes);
  EXPECT_EQ(st.metadata().nodes(1).api_endpoint().host(), "10.0.0.2");
  ASSERT_EQ(st.metadata().partitions_size(), static_cast<int>(kPartitions));
  // Partition 1 is not hosted on node 1 and its nodes do not answer: placement known, leader
  // not.
  EXPECT_EQ(st.metadata().partitions(1).voters_size(), 3);
  EXPECT_EQ(st.metadata().partitions(1).leader_node_id(), 0u);
  EXPECT_EQ(st.partitions_without_leader(), 1u);
  uint32_t leaders = 0;
  ASSERT_EQ(st.nodes_size(), kNodes);
  for (const auto& n : st.nodes()) {
    EXPECT_EQ(n.replica_count(), 3u) << "node " << n.node_id();
    EXPECT_EQ(n.reachable(), n.node_id() == 1) << "node " << n.node_id();
    leaders += n.leader_count();
  }
  EXPECT_EQ(leaders, 3u);  // the three partitions node 1 hosts
}

TEST_F(AdminServiceTest, TransferLeadershipMovesTheLeaderOrSaysWhoLeads) {
  const uint32_t p = 0;  // voters 1, 2, 3
  raft::NodeId leader = WaitForLeader(p);
  ASSERT_NE(leader, 0u);
  raft::NodeId follower = leader % 3 + 1;

  v1::TransferLeadershipRequest req;
  req.set_partition(p);
  req.set_target_node_id(follower);
  v1::TransferLeadershipResponse resp;
  grpc::Status st = nodes_[follower].stub->TransferLeadership(Context().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::ErrorInfo info = InfoOf(st);
  EXPECT_EQ(info.code(), v1::ERROR_CODE_NOT_LEADER);
  EXPECT_EQ(info.leader_hint().node_id(), leader);
  EXPECT_EQ(info.leader_hint().endpoint().host(), "10.0.0." + std::to_string(leader));
  EXPECT_EQ(info.leader_hint().endpoint().port(), 7070u);

  ASSERT_TRUE(nodes_[leader].stub->TransferLeadership(Context().get(), req, &resp).ok());
  EXPECT_EQ(resp.leader_node_id(), follower);
  EXPECT_EQ(WaitForLeader(p), follower);

  // Target 0: the leader picks another voter.
  req.set_target_node_id(0);
  ASSERT_TRUE(nodes_[follower].stub->TransferLeadership(Context().get(), req, &resp).ok());
  EXPECT_NE(resp.leader_node_id(), follower);
  EXPECT_NE(resp.leader_node_id(), 0u);

  // Node 4 is no voter of partition 0, and hosts no replica of it.
  req.set_target_node_id(4);
  st = nodes_[resp.leader_node_id()].stub->TransferLeadership(Context().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  st = nodes_[4].stub->TransferLeadership(Context().get(), req, &resp);
  EXPECT_EQ(InfoOf(st).code(), v1::ERROR_CODE_NOT_LEADER);
}

TEST_F(AdminServiceTest, TransferToAnUnreachableVoterIsRefusedAndTheLeaderKeepsLeading) {
  const uint32_t p = 0;  // voters 1, 2, 3
  raft::NodeId leader = WaitForLeader(p);
  ASSERT_NE(leader, 0u);
  raft::NodeId target = leader % 3 + 1;
  raft::NodeId other = 6 - leader - target;
  net_.CutOff(target, true);
  // Longer than RaftHost::kTransferLiveness election timeouts (of 10 ticks of 10 ms).
  std::this_thread::sleep_for(500ms);
  v1::TransferLeadershipRequest req;
  req.set_partition(p);
  req.set_target_node_id(target);
  v1::TransferLeadershipResponse resp;
  grpc::Status st = nodes_[leader].stub->TransferLeadership(Context().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("has not been heard from"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(WaitForLeader(p), leader);

  // Target 0: the leader picks the voter it can reach.
  req.set_target_node_id(0);
  st = nodes_[leader].stub->TransferLeadership(Context().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.leader_node_id(), other);
  net_.CutOff(target, false);
}

TEST_F(AdminServiceTest, MembershipChangesCheckTheirArguments) {
  v1::AddNodeResponse added;
  grpc::Status st = nodes_[1].stub->AddNode(Context().get(), {}, &added);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("node_id is required"), std::string::npos);
  // These hosts run no metadata group: nothing can be removed before it is initialized.
  v1::RemoveNodeRequest req;
  req.set_node_id(2);
  v1::RemoveNodeResponse removed;
  st = nodes_[1].stub->RemoveNode(Context().get(), req, &removed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("not initialized"), std::string::npos);
}

}  // namespace
}  // namespace herald::cluster
