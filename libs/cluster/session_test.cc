// MQTT persistent sessions through the Broker service of a single-replica core: the RPCs, the
// leader's lease and timers, and will publication.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <limits>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/cluster/local_transport.h"
#include "libs/cluster/session_manager.h"
#include "libs/common/partitioning.h"

namespace herald::cluster {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kPartitions = 4;

v1::ErrorInfo Details(const grpc::Status& s) {
  v1::ErrorInfo e;
  e.ParseFromString(s.error_details());
  return e;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-sessions-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto e = storage::Engine::Open({.path = dir_, .sync = false});
    ASSERT_TRUE(e.ok());
    engine_ = std::move(*e);
    transport_ = net_.TransportFor(1);
    RaftHostOptions o;
    o.node_id = 1;
    o.tick = 10ms;
    host_ = std::make_unique<RaftHost>(*engine_, *transport_, o);
    for (uint32_t p = 0; p < kPartitions; ++p) {
      ASSERT_TRUE(host_->AddPartitionGroup(GroupForPartition(p), p, {1}).ok());
    }
    ASSERT_TRUE(host_->Start().ok());
    SessionManagerOptions so;
    so.node_id = 1;
    so.partition_count = kPartitions;
    so.lease = 400ms;
    so.timer_interval = 20ms;
    sessions_ = std::make_unique<SessionManager>(*host_, so);
    sessions_->Start();
    BrokerServiceOptions bo;
    bo.partition_count = kPartitions;
    service_ = std::make_unique<BrokerService>(*host_, bo, Clock::Real(), sessions_.get());
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Broker::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                    grpc::InsecureChannelCredentials()));
    ASSERT_TRUE(Eventually([&] {
      int leaders = 0;
      for (const auto& st : host_->Status()) leaders += st.role == raft::Role::kLeader;
      return leaders == static_cast<int>(kPartitions);
    }));
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
    sessions_->Stop();
    host_->Stop();
    std::filesystem::remove_all(dir_);
  }

  // Polls `done` until it holds or 5 s passed.
  static bool Eventually(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return done();
  }

  v1::OpenSessionResponse Open(const std::string& client, uint32_t expiry_s,
                               std::optional<v1::WillMessage> will = std::nullopt,
                               bool clean_start = false) {
    v1::OpenSessionRequest req;
    req.set_client_id(client);
    req.set_edge_id("edge-a");
    req.set_clean_start(clean_start);
    req.set_expiry_interval_s(expiry_s);
    if (will) *req.mutable_will() = *will;
    grpc::ClientContext ctx;
    v1::OpenSessionResponse resp;
    grpc::Status s = stub_->OpenSession(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  v1::SessionUpdateResult Update(const v1::SessionUpdate& u) {
    v1::UpdateSessionsRequest req;
    *req.add_updates() = u;
    grpc::ClientContext ctx;
    v1::UpdateSessionsResponse resp;
    grpc::Status s = stub_->UpdateSessions(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.results_size() == 1 ? resp.results(0) : v1::SessionUpdateResult();
  }
  grpc::Status Close(const std::string& client, uint64_t epoch, bool publish_will,
                     std::optional<uint32_t> expiry_s = std::nullopt,
                     v1::CloseSessionResponse* resp_out = nullptr) {
    v1::CloseSessionRequest req;
    req.set_client_id(client);
    req.set_owner_epoch(epoch);
    req.set_publish_will(publish_will);
    if (expiry_s) req.set_expiry_interval_s(*expiry_s);
    grpc::ClientContext ctx;
    v1::CloseSessionResponse resp;
    grpc::Status s = stub_->CloseSession(&ctx, req, &resp);
    if (resp_out != nullptr) *resp_out = resp;
    return s;
  }
  grpc::Status Get(const std::string& client, v1::Session* out = nullptr) {
    v1::GetSessionRequest req;
    req.set_client_id(client);
    grpc::ClientContext ctx;
    v1::GetSessionResponse resp;
    grpc::Status s = stub_->GetSession(&ctx, req, &resp);
    if (out != nullptr) *out = resp.session();
    return s;
  }
  // Messages of `topic` committed in its partition.
  std::vector<v1::Message> FetchTopic(const std::string& topic) {
    v1::FetchRequest req;
    req.add_ranges()->set_partition(PartitionFor(topic, kPartitions));
    req.add_filters(topic);
    grpc::ClientContext ctx;
    v1::FetchResponse resp;
    EXPECT_TRUE(stub_->Fetch(&ctx, req, &resp).ok());
    if (resp.results_size() != 1) return {};
    return {resp.results(0).messages().begin(), resp.results(0).messages().end()};
  }

  static v1::WillMessage Will(const std::string& topic, uint32_t delay_s) {
    v1::WillMessage w;
    w.mutable_message()->set_topic(topic);
    w.mutable_message()->set_payload("last words");
    w.set_delay_interval_s(delay_s);
    return w;
  }

  std::string dir_;
  LocalNetwork net_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<RaftHost> host_;
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<BrokerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Broker::Stub> stub_;
};

TEST_F(SessionTest, DelayedWillIsPublishedOnceAndTheSessionExpires) {
  v1::OpenSessionResponse open = Open("c1", 2, Will("status/c1", 1));
  EXPECT_FALSE(open.session_present());
  EXPECT_EQ(open.lease_ms(), 400u);
  const uint64_t epoch = open.session().owner_epoch();
  v1::SessionUpdate u;
  u.set_client_id("c1");
  u.set_owner_epoch(epoch);
  u.add_put_subscriptions()->set_filter("$share/g/a/+");
  auto* pos = u.add_commit_positions();
  pos->set_partition(1);
  pos->set_epoch(1);
  pos->set_offset(5);
  v1::SessionUpdateResult r = Update(u);
  EXPECT_FALSE(r.has_error()) << r.error().message();
  v1::Session s;
  ASSERT_TRUE(Get("c1", &s).ok());
  EXPECT_EQ(s.subscriptions(0).filter(), "$share/g/a/+");
  EXPECT_EQ(s.cursor().positions(0).offset(), 5u);

  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Close("c1", epoch, /*publish_will=*/true).ok());
  EXPECT_TRUE(FetchTopic("status/c1").empty());  // not before the delay
  ASSERT_TRUE(Eventually([&] { return !FetchTopic("status/c1").empty(); }));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 900ms);
  auto wills = FetchTopic("status/c1");
  ASSERT_EQ(wills.size(), 1u);
  EXPECT_EQ(wills[0].payload(), "last words");

  // Session expiry (2 s after the close) deletes it; the will is not published again.
  ASSERT_TRUE(Eventually([&] { return Get("c1").error_code() == grpc::StatusCode::NOT_FOUND; }));
  grpc::Status gone = Get("c1");
  EXPECT_EQ(Details(gone).code(), v1::ERROR_CODE_SESSION_NOT_FOUND);
  EXPECT_EQ(FetchTopic("status/c1").size(), 1u);
}

TEST_F(SessionTest, LapsedLeasePublishesTheWill) {
  v1::OpenSessionResponse open = Open("c2", 60, Will("status/c2", 0));
  // Renewed for a while: nothing happens.
  v1::SessionUpdate renew;
  renew.set_client_id("c2");
  renew.set_owner_epoch(open.session().owner_epoch());
  for (int i = 0; i < 8; ++i) {
    EXPECT_FALSE(Update(renew).has_error());
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(FetchTopic("status/c2").empty());
  // No more renewals: the lease lapses, the session is disconnected and its will published.
  ASSERT_TRUE(Eventually([&] { return !FetchTopic("status/c2").empty(); }));
  v1::Session s;
  ASSERT_TRUE(Get("c2", &s).ok());
  EXPECT_TRUE(s.owner_edge_id().empty());
  EXPECT_NE(s.disconnected_time_unix_ms(), 0);
  EXPECT_FALSE(s.has_will());
  // The owner that let its lease lapse is fenced.
  EXPECT_EQ(Update(renew).error().code(), v1::ERROR_CODE_FENCED);
}

TEST_F(SessionTest, TakeoverFencesTheOldOwnerAndExpiryZeroCloseDeletes) {
  v1::OpenSessionResponse first = Open("c3", 60);
  v1::OpenSessionResponse second = Open("c3", 60);
  EXPECT_TRUE(second.session_present());
  EXPECT_GT(second.session().owner_epoch(), first.session().owner_epoch());

  v1::SessionUpdate stale;
  stale.set_client_id("c3");
  stale.set_owner_epoch(first.session().owner_epoch());
  EXPECT_EQ(Update(stale).error().code(), v1::ERROR_CODE_FENCED);
  grpc::Status fenced = Close("c3", first.session().owner_epoch(), false);
  EXPECT_EQ(fenced.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Details(fenced).code(), v1::ERROR_CODE_FENCED);

  v1::SessionUpdate bad = stale;
  bad.add_put_subscriptions()->set_filter("a/#/b");
  EXPECT_EQ(Update(bad).error().code(), v1::ERROR_CODE_INVALID_ARGUMENT);

  v1::CloseSessionResponse closed;
  ASSERT_TRUE(Close("c3", second.session().owner_epoch(), false, 0, &closed).ok());
  EXPECT_TRUE(closed.session_deleted());
  EXPECT_EQ(Get("c3").error_code(), grpc::StatusCode::NOT_FOUND);
  v1::SessionUpdate after = stale;
  after.set_owner_epoch(second.session().owner_epoch());
  EXPECT_EQ(Update(after).error().code(), v1::ERROR_CODE_SESSION_NOT_FOUND);
  EXPECT_EQ(Close("c3", second.session().owner_epoch(), false).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// Node 1 hosts the sessions' partitions, node 2 the will topic's: the will is forwarded to node 2
// with Broker.Publish.
TEST(SessionWillForwardingTest, WillOfAnotherNodesPartitionIsForwardedToItsLeader) {
  struct Node {
    std::string dir;
    std::unique_ptr<storage::Engine> engine;
    std::unique_ptr<Transport> transport;
    std::unique_ptr<RaftHost> host;
    std::unique_ptr<BrokerService> service;
    std::unique_ptr<grpc::Server> server;
    std::string address;
  };
  LocalNetwork net;
  const std::vector<uint32_t> on_node[2] = {{0, 1}, {2, 3}};
  Node nodes[2];
  for (int i = 0; i < 2; ++i) {
    Node& n = nodes[i];
    char tmpl[] = "/tmp/herald-sessions-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    n.dir = tmpl;
    auto e = storage::Engine::Open({.path = n.dir, .sync = false});
    ASSERT_TRUE(e.ok());
    n.engine = std::move(*e);
    const raft::NodeId id = static_cast<raft::NodeId>(i + 1);
    n.transport = net.TransportFor(id);
    RaftHostOptions o;
    o.node_id = id;
    o.tick = 10ms;
    n.host = std::make_unique<RaftHost>(*n.engine, *n.transport, o);
    for (uint32_t p : on_node[i]) {
      ASSERT_TRUE(n.host->AddPartitionGroup(GroupForPartition(p), p, {id}).ok());
    }
    ASSERT_TRUE(n.host->Start().ok());
  }
  // Node 2 serves Publish; node 1 runs the session timers.
  BrokerServiceOptions bo;
  bo.partition_count = kPartitions;
  nodes[1].service = std::make_unique<BrokerService>(*nodes[1].host, bo);
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(nodes[1].service.get());
  nodes[1].server = b.BuildAndStart();
  ASSERT_NE(port, 0);
  SessionManagerOptions so;
  so.node_id = 1;
  so.partition_count = kPartitions;
  so.directory = std::make_shared<NodeDirectory>(std::map<raft::NodeId, std::string>{
      {1, "127.0.0.1:1"}, {2, "127.0.0.1:" + std::to_string(port)}});
  so.timer_interval = 20ms;
  SessionManager sessions(*nodes[0].host, so);
  auto wait_leaders = [&](Node& n, size_t want) {
    for (int i = 0; i < 500; ++i) {
      size_t leaders = 0;
      for (const auto& st : n.host->Status()) leaders += st.role == raft::Role::kLeader;
      if (leaders == want) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  };
  ASSERT_TRUE(wait_leaders(nodes[0], 2));
  ASSERT_TRUE(wait_leaders(nodes[1], 2));
  sessions.Start();

  std::string client, topic;
  for (int i = 0; client.empty() || topic.empty(); ++i) {
    std::string c = "client-" + std::to_string(i);
    if (client.empty() && PartitionFor(c, kPartitions) < 2) client = c;
    std::string t = "status/" + std::to_string(i);
    if (topic.empty() && PartitionFor(t, kPartitions) >= 2) topic = t;
  }
  auto propose = [&](const v1::PartitionCommand& cmd) {
    std::promise<ProposalResult> done;
    nodes[0].host->Propose(GroupForPartition(PartitionFor(client, kPartitions)),
                           cmd.SerializeAsString(),
                           [&](ProposalResult r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  v1::PartitionCommand open;
  open.set_proposed_at_unix_ms(1);
  auto* req = open.mutable_open_session()->mutable_request();
  req->set_client_id(client);
  req->set_edge_id("edge-a");
  req->set_expiry_interval_s(60);
  req->mutable_will()->mutable_message()->set_topic(topic);
  req->mutable_will()->mutable_message()->set_payload("bye");
  ProposalResult opened = propose(open);
  ASSERT_TRUE(opened.status.ok());
  v1::PartitionCommand close;
  close.set_proposed_at_unix_ms(2);
  close.mutable_close_session()->mutable_request()->set_client_id(client);
  close.mutable_close_session()->mutable_request()->set_owner_epoch(
      opened.apply.open_session->session().owner_epoch());
  close.mutable_close_session()->mutable_request()->set_publish_will(true);
  ASSERT_TRUE(propose(close).status.ok());

  // The will reaches node 2's partition, and node 1's outbox empties.
  const GroupId will_group = GroupForPartition(PartitionFor(topic, kPartitions));
  bool published = false;
  bool outbox_empty = false;
  for (int i = 0; i < 500 && !(published && outbox_empty); ++i) {
    std::this_thread::sleep_for(10ms);
    nodes[1].host->WithPartition(will_group, [&](broker::PartitionStateMachine& sm) {
      auto f = sm.Fetch(0, 0, {topic}, std::numeric_limits<int64_t>::max() / 2, {});
      published = f.ok() && f->messages.size() == 1 && f->messages[0].payload() == "bye";
    });
    nodes[0].host->WithPartition(
        GroupForPartition(PartitionFor(client, kPartitions)),
        [&](broker::PartitionStateMachine& sm) { outbox_empty = sm.will_outbox().empty(); });
  }
  EXPECT_TRUE(published);
  EXPECT_TRUE(outbox_empty);

  sessions.Stop();
  nodes[1].server->Shutdown(std::chrono::system_clock::now() + 1s);
  for (Node& n : nodes) n.host->Stop();
  for (Node& n : nodes) std::filesystem::remove_all(n.dir);
}

}  // namespace
}  // namespace herald::cluster
