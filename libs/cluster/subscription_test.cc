#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/cluster/local_transport.h"
#include "libs/common/partitioning.h"

namespace herald::cluster {
namespace {

using namespace std::chrono_literals;
using Stream = grpc::ClientReaderWriter<v1::SubscribeRequest, v1::SubscribeResponse>;

constexpr uint32_t kPartitions = 4;

// A single-replica core (one RaftHost, every partition) behind a real gRPC server.
class SubscribeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-subscribe-XXXXXX";
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
    BrokerServiceOptions bo;
    bo.partition_count = kPartitions;
    bo.heartbeat_min = 50ms;
    service_ = std::make_unique<BrokerService>(*host_, bo);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Broker::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                    grpc::InsecureChannelCredentials()));
    // Wait until the single replica leads every partition.
    for (int i = 0; i < 500; ++i) {
      int leaders = 0;
      for (const auto& st : host_->Status()) leaders += st.role == raft::Role::kLeader;
      if (leaders == static_cast<int>(kPartitions)) break;
      std::this_thread::sleep_for(10ms);
    }
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
    host_->Stop();
    std::filesystem::remove_all(dir_);
  }

  void Publish(const std::string& topic, const std::string& payload, bool retain = false) {
    v1::PublishRequest req;
    auto* m = req.add_messages();
    m->set_topic(topic);
    m->set_payload(payload);
    m->set_retain(retain);
    grpc::ClientContext ctx;
    v1::PublishResponse resp;
    ASSERT_TRUE(stub_->Publish(&ctx, req, &resp).ok());
    ASSERT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();
  }

  std::unique_ptr<Stream> Start(grpc::ClientContext* ctx, uint32_t partition,
                                std::vector<std::string> filters, uint64_t credit,
                                v1::StartMode mode = v1::START_MODE_AFTER_POSITION,
                                uint32_t heartbeat_ms = 200) {
    auto s = stub_->Subscribe(ctx);
    v1::SubscribeRequest req;
    auto* st = req.mutable_start();
    st->set_edge_id("test-edge");
    auto* ps = st->add_partitions();
    ps->set_partition(partition);
    ps->set_mode(mode);
    for (auto& f : filters) st->add_filters(f);
    st->set_initial_credit_bytes(credit);
    st->set_heartbeat_interval_ms(heartbeat_ms);
    EXPECT_TRUE(s->Write(req));
    return s;
  }

  // Reads events until `n` messages arrived (or `max_events` events passed).
  std::vector<v1::Message> ReadMessages(Stream* s, size_t n, int max_events = 50) {
    std::vector<v1::Message> got;
    v1::SubscribeResponse resp;
    for (int i = 0; i < max_events && got.size() < n && s->Read(&resp); ++i) {
      if (!resp.has_deliveries()) continue;
      for (const auto& pm : resp.deliveries().partitions()) {
        for (const auto& m : pm.messages()) got.push_back(m);
      }
    }
    return got;
  }

  std::string dir_;
  LocalNetwork net_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<RaftHost> host_;
  std::unique_ptr<BrokerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Broker::Stub> stub_;
};

TEST_F(SubscribeTest, BacklogThenLiveMessagesInOrder) {
  const std::string topic = "a/1";
  uint32_t p = PartitionFor(topic, kPartitions);
  for (int i = 0; i < 5; ++i) Publish(topic, "old-" + std::to_string(i));
  grpc::ClientContext ctx;
  auto s = Start(&ctx, p, {"a/#"}, 1 << 20);
  auto backlog = ReadMessages(s.get(), 5);
  ASSERT_EQ(backlog.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(backlog[i].payload(), "old-" + std::to_string(i));
  for (int i = 0; i < 3; ++i) Publish(topic, "new-" + std::to_string(i));
  auto live = ReadMessages(s.get(), 3);
  ASSERT_EQ(live.size(), 3u);
  EXPECT_EQ(live[0].payload(), "new-0");
  EXPECT_EQ(live[2].offset(), 8u);
  ctx.TryCancel();
}

TEST_F(SubscribeTest, NothingIsDeliveredWithoutCreditUntilItIsGranted) {
  const std::string topic = "c/1";
  uint32_t p = PartitionFor(topic, kPartitions);
  for (int i = 0; i < 10; ++i) Publish(topic, std::string(100, 'a' + i));
  grpc::ClientContext ctx;
  // Enough credit for one message: the core may overdraw by one message, then stops.
  auto s = Start(&ctx, p, {"#"}, 50);
  v1::SubscribeResponse resp;
  size_t delivered = 0;
  bool saw_negative_credit_heartbeat = false;
  for (int i = 0; i < 10 && s->Read(&resp); ++i) {
    if (resp.has_deliveries()) {
      for (const auto& pm : resp.deliveries().partitions()) delivered += pm.messages_size();
    }
    if (resp.has_heartbeat() && resp.heartbeat().credit_bytes() < 0) {
      saw_negative_credit_heartbeat = true;
      break;
    }
  }
  EXPECT_EQ(delivered, 1u);
  EXPECT_TRUE(saw_negative_credit_heartbeat);
  v1::SubscribeRequest grant;
  grant.mutable_credit()->set_bytes(1 << 20);
  ASSERT_TRUE(s->Write(grant));
  EXPECT_EQ(ReadMessages(s.get(), 9).size(), 9u);
  ctx.TryCancel();
}

TEST_F(SubscribeTest, FilterChangeIsAcknowledgedWithSwitchPositionsAndTakesEffect) {
  const std::string a = "x/a", b = "x/b";
  uint32_t p = PartitionFor(a, kPartitions);
  // Use topics of one partition.
  std::string other = b;
  for (int i = 0; PartitionFor(other, kPartitions) != p; ++i) other = "x/b" + std::to_string(i);
  grpc::ClientContext ctx;
  auto s = Start(&ctx, p, {a}, 1 << 20);
  Publish(other, "not yet");
  Publish(a, "one");
  auto first = ReadMessages(s.get(), 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].payload(), "one");
  v1::SubscribeRequest change;
  change.mutable_change()->set_change_id(7);
  change.mutable_change()->add_add_filters(other);
  ASSERT_TRUE(s->Write(change));
  v1::SubscribeResponse resp;
  bool applied = false;
  for (int i = 0; i < 20 && s->Read(&resp); ++i) {
    if (resp.has_change_applied()) {
      EXPECT_EQ(resp.change_applied().change_id(), 7u);
      ASSERT_EQ(resp.change_applied().switch_positions_size(), 1);
      EXPECT_EQ(resp.change_applied().switch_positions(0).offset(), 2u);
      applied = true;
      break;
    }
  }
  ASSERT_TRUE(applied);
  Publish(other, "now");
  auto after = ReadMessages(s.get(), 1);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].payload(), "now");
  ctx.TryCancel();
}

TEST_F(SubscribeTest, IdleStreamGetsHeartbeatsWithProgress) {
  Publish("h/1", "x");
  uint32_t p = PartitionFor("h/1", kPartitions);
  grpc::ClientContext ctx;
  auto s = Start(&ctx, p, {"nothing/matches"}, 1 << 20, v1::START_MODE_EARLIEST, 100);
  v1::SubscribeResponse resp;
  bool hb = false;
  for (int i = 0; i < 10 && s->Read(&resp); ++i) {
    if (resp.has_heartbeat()) {
      ASSERT_EQ(resp.heartbeat().progress_size(), 1);
      EXPECT_EQ(resp.heartbeat().progress(0).offset(), 1u);  // evaluated, none matched
      hb = true;
      break;
    }
  }
  EXPECT_TRUE(hb);
  ctx.TryCancel();
}

TEST_F(SubscribeTest, UnknownPartitionIsStoppedAndFirstMessageMustBeStart) {
  grpc::ClientContext ctx;
  auto s = Start(&ctx, 99, {"#"}, 1 << 20);
  v1::SubscribeResponse resp;
  ASSERT_TRUE(s->Read(&resp));
  ASSERT_TRUE(resp.has_stopped());
  EXPECT_EQ(resp.stopped().error().code(), v1::ERROR_CODE_PARTITION_UNAVAILABLE);
  ctx.TryCancel();

  grpc::ClientContext ctx2;
  auto bad = stub_->Subscribe(&ctx2);
  v1::SubscribeRequest credit;
  credit.mutable_credit()->set_bytes(1);
  bad->Write(credit);
  bad->WritesDone();
  EXPECT_EQ(bad->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(SubscribeTest, GetRetainedPagesThroughAPartitionsRetainedMessages) {
  // Five retained topics in one partition, one deleted by an empty retained payload.
  std::vector<std::string> topics;
  for (int i = 0; topics.size() < 5; ++i) {
    std::string t = "r/" + std::to_string(i);
    if (PartitionFor(t, kPartitions) == 0) topics.push_back(t);
  }
  for (const auto& t : topics) Publish(t, "v-" + t, /*retain=*/true);
  Publish(topics[2], "", /*retain=*/true);
  Publish("r/not-retained", "x");
  std::vector<std::string> got;
  std::string after;
  int pages = 0;
  do {
    v1::GetRetainedRequest req;
    req.add_filters("r/#");
    req.set_max_messages(2);
    auto* q = req.add_queries();
    q->set_partition(0);
    q->set_after_topic(after);
    grpc::ClientContext ctx;
    v1::GetRetainedResponse resp;
    ASSERT_TRUE(stub_->GetRetained(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.results_size(), 1);
    const auto& r = resp.results(0);
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_GE(r.as_of_offset(), 6u);
    for (const auto& m : r.messages()) {
      EXPECT_TRUE(m.retain());
      got.push_back(m.topic());
    }
    after = r.next_after_topic();
    ++pages;
  } while (!after.empty() && pages < 10);
  std::vector<std::string> expect = topics;
  expect.erase(expect.begin() + 2);
  std::sort(expect.begin(), expect.end());
  EXPECT_EQ(got, expect);
  EXPECT_GE(pages, 2);

  v1::GetRetainedRequest bad;
  bad.add_filters("r/#");
  bad.add_queries()->set_partition(99);
  grpc::ClientContext ctx;
  v1::GetRetainedResponse resp;
  ASSERT_TRUE(stub_->GetRetained(&ctx, bad, &resp).ok());
  EXPECT_EQ(resp.results(0).error().code(), v1::ERROR_CODE_INVALID_ARGUMENT);
  v1::GetRetainedRequest no_filter;
  no_filter.add_queries()->set_partition(0);
  grpc::ClientContext ctx2;
  EXPECT_EQ(stub_->GetRetained(&ctx2, no_filter, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}


TEST_F(SubscribeTest, NodeWithoutAReplicaRedirectsToOneOfThePartitionsReplicas) {
  // A service for kPartitions + 1 partitions over a host holding the first kPartitions: the last
  // one is not hosted here, and the metadata says nodes 2 and 3 hold it.
  const uint32_t absent = kPartitions;
  v1::MetadataStateRecord rec;
  rec.set_applied_index(1);
  rec.set_initialized(true);
  for (uint64_t id : {1, 2, 3}) {
    v1::NodeInfo* n = rec.add_nodes();
    n->set_node_id(id);
    n->mutable_peer_endpoint()->set_host("127.0.0.1");
    n->mutable_peer_endpoint()->set_port(static_cast<uint32_t>(7100 + id));
  }
  for (uint32_t p = 0; p <= absent; ++p) {
    v1::PartitionAssignment* a = rec.add_assignments();
    a->set_partition(p);
    if (p == absent) {
      // This node is assigned too but has no replica yet: it must not name itself.
      a->add_replicas(1);
      a->add_replicas(2);
      a->add_replicas(3);
    } else {
      a->add_replicas(1);
    }
  }
  BrokerServiceOptions bo;
  bo.partition_count = kPartitions + 1;
  bo.node_id = 1;
  bo.directory = std::make_shared<NodeDirectory>();
  bo.directory->Update(rec);
  BrokerService service(*host_, bo);
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&service);
  auto server = b.BuildAndStart();
  ASSERT_NE(port, 0);
  auto stub = v1::Broker::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
  std::set<uint64_t> named;
  auto expect_redirect = [&named](const v1::ErrorInfo& e, const char* what) {
    EXPECT_EQ(e.code(), v1::ERROR_CODE_NOT_LEADER) << what << ": " << e.message();
    const uint64_t node = e.leader_hint().node_id();
    EXPECT_TRUE(node == 2 || node == 3) << what << ": named node " << node;
    EXPECT_EQ(e.leader_hint().endpoint().port(), 7100 + node) << what;
    EXPECT_EQ(e.leader_hint().term(), 0u) << what;
    named.insert(node);
  };

  std::string topic;
  for (int i = 0; topic.empty(); ++i) {
    std::string t = "elsewhere/" + std::to_string(i);
    if (PartitionFor(t, kPartitions + 1) == absent) topic = t;
  }
  v1::PublishRequest pub;
  pub.add_messages()->set_topic(topic);
  grpc::ClientContext c1;
  v1::PublishResponse pr;
  ASSERT_TRUE(stub->Publish(&c1, pub, &pr).ok());
  ASSERT_EQ(pr.results_size(), 1);
  expect_redirect(pr.results(0).error(), "publish");

  v1::FetchRequest fetch;
  fetch.add_ranges()->set_partition(absent);
  fetch.add_filters("#");
  grpc::ClientContext c2;
  v1::FetchResponse fr;
  ASSERT_TRUE(stub->Fetch(&c2, fetch, &fr).ok());
  ASSERT_EQ(fr.results_size(), 1);
  expect_redirect(fr.results(0).error(), "fetch");

  grpc::ClientContext c3;
  auto s = stub->Subscribe(&c3);
  v1::SubscribeRequest start;
  start.mutable_start()->set_edge_id("test-edge");
  start.mutable_start()->add_partitions()->set_partition(absent);
  start.mutable_start()->add_filters("#");
  start.mutable_start()->set_initial_credit_bytes(1 << 20);
  ASSERT_TRUE(s->Write(start));
  v1::SubscribeResponse resp;
  ASSERT_TRUE(s->Read(&resp));
  ASSERT_TRUE(resp.has_stopped());
  expect_redirect(resp.stopped().error(), "subscribe");
  c3.TryCancel();
  // Neither replica is heard from here: the hints take turns between them.
  EXPECT_EQ(named, (std::set<uint64_t>{2, 3}));

  // A partition number beyond the partition count is no partition at all.
  grpc::ClientContext c4;
  auto s2 = stub->Subscribe(&c4);
  v1::SubscribeRequest beyond = start;
  beyond.mutable_start()->mutable_partitions(0)->set_partition(0x80000001u);
  ASSERT_TRUE(s2->Write(beyond));
  ASSERT_TRUE(s2->Read(&resp));
  ASSERT_TRUE(resp.has_stopped());
  EXPECT_EQ(resp.stopped().error().code(), v1::ERROR_CODE_PARTITION_UNAVAILABLE);
  c4.TryCancel();
  server->Shutdown(std::chrono::system_clock::now() + 1s);
}

}  // namespace
}  // namespace herald::cluster
