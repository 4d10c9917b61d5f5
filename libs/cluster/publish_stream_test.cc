// PublishStream (broker.proto) against a two-replica core: node 1 leads every partition and
// serves the Broker API; node 2 is its follower, which the tests can cut off so that
// proposals stay uncommitted for as long as they need.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/cluster/local_transport.h"
#include "libs/common/partitioning.h"

namespace herald::cluster {
namespace {

using namespace std::chrono_literals;
using Stream = grpc::ClientReaderWriter<v1::PublishStreamRequest, v1::PublishStreamResponse>;

constexpr uint32_t kPartitions = 4;

class PublishStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-pubstream-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (raft::NodeId id : {1, 2}) {
      Node& n = nodes_[id];
      auto e = storage::Engine::Open({.path = dir_ + "/n" + std::to_string(id), .sync = false});
      ASSERT_TRUE(e.ok());
      n.engine = std::move(*e);
      n.transport = net_.TransportFor(id);
      RaftHostOptions o;
      o.node_id = id;
      // Elections take 2-4 s; a leader cut off from its follower keeps leading at least 2 s,
      // much longer than the tests keep it cut off.
      o.tick = 25ms;
      o.election_ticks = 80;
      n.host = std::make_unique<RaftHost>(*n.engine, *n.transport, o);
      net_.Attach(id, n.host.get());
      for (uint32_t p = 0; p < kPartitions; ++p) {
        ASSERT_TRUE(n.host->AddPartitionGroup(GroupForPartition(p), p, {1, 2}).ok());
      }
    }
    for (auto& [id, n] : nodes_) ASSERT_TRUE(n.host->Start().ok());
    // Node 1 leads every partition.
    bool led = false;
    for (int i = 0; i < 1000 && !led; ++i) {
      int mine = 0;
      for (const auto& st : nodes_[1].host->Status()) {
        if (st.group == 0) continue;
        if (st.role == raft::Role::kLeader) {
          ++mine;
        } else if (st.leader == 2) {
          nodes_[2].host->TransferLeadership(st.group, 1);
        }
      }
      led = mine == static_cast<int>(kPartitions);
      if (!led) std::this_thread::sleep_for(10ms);
    }
    ASSERT_TRUE(led) << "node 1 did not come to lead every partition";
    BrokerServiceOptions bo;
    bo.partition_count = kPartitions;
    bo.node_id = 1;
    bo.max_messages_per_request = 20;
    bo.max_stream_inflight = inflight_limit_;
    bo.max_stream_inflight_bytes = inflight_bytes_limit_;
    service_ = std::make_unique<BrokerService>(*nodes_[1].host, bo);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(service_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Broker::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                    grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    net_.CutOff(2, false);
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 2s);
    for (auto& [id, n] : nodes_) {
      if (n.host) n.host->Stop();
    }
    std::filesystem::remove_all(dir_);
  }

  // A topic of partition `p`.
  static std::string TopicOf(uint32_t p, int salt = 0) {
    for (int i = 0;; ++i) {
      std::string t = "ps/" + std::to_string(salt) + "/" + std::to_string(i);
      if (PartitionFor(t, kPartitions) == p) return t;
    }
  }
  static v1::StreamedPublish Item(uint64_t id, const std::vector<std::string>& topics) {
    v1::StreamedPublish r;
    r.set_request_id(id);
    for (const auto& t : topics) {
      v1::Message* m = r.mutable_publish()->add_messages();
      m->set_topic(t);
      m->set_payload("m" + std::to_string(id));
    }
    return r;
  }
  // A stream message with one request.
  static v1::PublishStreamRequest Request(uint64_t id, const std::vector<std::string>& topics) {
    v1::PublishStreamRequest r;
    *r.add_requests() = Item(id, topics);
    return r;
  }
  // Reads stream messages until `n` answers came (false if the stream ended first).
  static bool ReadAnswers(Stream* s, size_t n, std::vector<v1::StreamedPublishAnswer>* out) {
    v1::PublishStreamResponse r;
    while (out->size() < n) {
      if (!s->Read(&r)) return false;
      for (auto& a : *r.mutable_answers()) out->push_back(std::move(a));
    }
    return true;
  }
  uint64_t Proposals() { return nodes_[1].host->stats().proposals.load(); }

  uint32_t inflight_limit_ = 2;
  uint64_t inflight_bytes_limit_ = 64 << 20;

  struct Node {
    std::unique_ptr<storage::Engine> engine;
    std::unique_ptr<Transport> transport;
    std::unique_ptr<RaftHost> host;
  };
  std::string dir_;
  LocalNetwork net_;
  std::map<raft::NodeId, Node> nodes_;
  std::unique_ptr<BrokerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Broker::Stub> stub_;
};

TEST_F(PublishStreamTest, EveryRequestGetsOneAnswerWithItsIdAndPublishsResults) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> s = stub_->PublishStream(&ctx);
  // 30 requests of three messages over all partitions, one with an invalid topic among them,
  // one with more messages than a request may carry.
  // Stream messages carry one, two or three requests in turn.
  std::map<uint64_t, v1::StreamedPublish> sent;
  v1::PublishStreamRequest message;
  for (uint64_t id = 100; id < 130; ++id) {
    auto p = static_cast<uint32_t>(id % kPartitions);
    std::vector<std::string> topics = {TopicOf(p), TopicOf((p + 1) % kPartitions), TopicOf(p, 1)};
    if (id == 107) topics[1] = "bad/+/topic";
    if (id == 111) topics.assign(21, TopicOf(p));
    sent[id] = Item(id, topics);
    *message.add_requests() = sent[id];
    if (message.requests_size() == static_cast<int>(id % 3) + 1 || id == 129) {
      ASSERT_TRUE(s->Write(message));
      message.Clear();
    }
  }
  ASSERT_TRUE(s->WritesDone());
  std::map<uint64_t, v1::StreamedPublishAnswer> answers;
  v1::PublishStreamResponse r;
  while (s->Read(&r)) {
    for (const auto& a : r.answers()) {
      EXPECT_TRUE(answers.emplace(a.request_id(), a).second)
          << "answered twice: " << a.request_id();
    }
  }
  grpc::Status st = s->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(answers.size(), sent.size());

  // Offsets: dense per partition, in request order within a partition (one stream, read in
  // order, proposed in order).
  std::map<uint32_t, std::set<uint64_t>> offsets;
  std::map<uint32_t, uint64_t> last_offset;
  size_t committed = 0;
  for (const auto& [id, a] : answers) {  // by id: the order the requests were sent in
    ASSERT_TRUE(sent.count(id)) << id;
    if (id == 111) {
      EXPECT_EQ(a.error().code(), v1::ERROR_CODE_INVALID_ARGUMENT);
      EXPECT_EQ(a.publish().results_size(), 0);
      continue;
    }
    EXPECT_FALSE(a.has_error());
    const auto& msgs = sent[id].publish().messages();
    ASSERT_EQ(a.publish().results_size(), msgs.size()) << id;
    for (int i = 0; i < msgs.size(); ++i) {
      const v1::PublishResult& res = a.publish().results(i);
      EXPECT_EQ(res.partition(), PartitionFor(msgs[i].topic(), kPartitions));
      if (id == 107 && i == 1) {
        EXPECT_EQ(res.error().code(), v1::ERROR_CODE_INVALID_ARGUMENT);
        continue;
      }
      EXPECT_FALSE(res.has_error()) << id << ": " << res.error().message();
      EXPECT_TRUE(offsets[res.partition()].insert(res.offset()).second) << "offset reused";
      EXPECT_GT(res.offset(), last_offset[res.partition()]) << "request " << id << " out of order";
      last_offset[res.partition()] = res.offset();
      ++committed;
    }
  }
  EXPECT_EQ(committed, 29u * 3 - 1);  // request 111 refused, one invalid topic
  for (const auto& [p, set] : offsets) {
    EXPECT_EQ(*set.rbegin() - *set.begin() + 1, set.size()) << "gap in partition " << p;
  }
}

TEST_F(PublishStreamTest, AStreamStartsNoMoreThanItsInflightLimitUntilAnswersComeBack) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> s = stub_->PublishStream(&ctx);
  // Warm the stream up (one answered request), then stop commits: node 1 cannot reach its
  // follower.
  ASSERT_TRUE(s->Write(Request(1, {TopicOf(0)})));
  std::vector<v1::StreamedPublishAnswer> first;
  ASSERT_TRUE(ReadAnswers(s.get(), 1, &first));
  ASSERT_FALSE(first[0].publish().results(0).has_error());
  net_.CutOff(2, true);
  const uint64_t before = Proposals();
  // Three requests, each to its own partition (so none is merged into another's proposal).
  for (uint64_t id = 2; id <= 4; ++id) {
    ASSERT_TRUE(s->Write(Request(id, {TopicOf(static_cast<uint32_t>(id - 1))})));
  }
  // The server reads and proposes two, then waits for an answer before reading the third.
  for (int i = 0; i < 100 && Proposals() - before < 2; ++i) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(Proposals() - before, 2u);
  net_.CutOff(2, false);
  std::vector<v1::StreamedPublishAnswer> got;
  ASSERT_TRUE(ReadAnswers(s.get(), 3, &got));
  std::set<uint64_t> answered;
  for (const auto& a : got) {
    answered.insert(a.request_id());
    EXPECT_FALSE(a.publish().results(0).has_error()) << a.publish().results(0).error().message();
  }
  EXPECT_EQ(answered, (std::set<uint64_t>{2, 3, 4}));
  EXPECT_EQ(Proposals() - before, 3u);
  ASSERT_TRUE(s->WritesDone());
  v1::PublishStreamResponse r;
  EXPECT_FALSE(s->Read(&r));
  EXPECT_TRUE(s->Finish().ok());
}

class PublishStreamByteLimitTest : public PublishStreamTest {
 protected:
  PublishStreamByteLimitTest() {
    inflight_limit_ = 1000;
    inflight_bytes_limit_ = 10;  // less than one request: one at a time
  }
};

TEST_F(PublishStreamByteLimitTest, AStreamReadsNoFurtherOnceItsUnansweredBytesReachTheLimit) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> s = stub_->PublishStream(&ctx);
  net_.CutOff(2, true);
  const uint64_t before = Proposals();
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(s->Write(Request(id, {TopicOf(static_cast<uint32_t>(id))})));
  }
  for (int i = 0; i < 100 && Proposals() == before; ++i) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(Proposals() - before, 1u);
  net_.CutOff(2, false);
  std::vector<v1::StreamedPublishAnswer> got;
  ASSERT_TRUE(ReadAnswers(s.get(), 3, &got));
  std::vector<uint64_t> answered;
  for (const auto& a : got) {
    answered.push_back(a.request_id());
    EXPECT_FALSE(a.publish().results(0).has_error()) << a.publish().results(0).error().message();
  }
  EXPECT_EQ(answered, (std::vector<uint64_t>{1, 2, 3})) << "one at a time: in order";
  ASSERT_TRUE(s->WritesDone());
  EXPECT_TRUE(s->Finish().ok());
}

TEST_F(PublishStreamTest, ACancelledStreamWithRequestsInFlightEndsOnceTheyComplete) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<Stream> s = stub_->PublishStream(ctx.get());
  net_.CutOff(2, true);
  const uint64_t before = Proposals();
  ASSERT_TRUE(s->Write(Request(1, {TopicOf(0)})));
  ASSERT_TRUE(s->Write(Request(2, {TopicOf(1)})));
  for (int i = 0; i < 200 && Proposals() - before < 2; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(Proposals() - before, 2u);
  ctx->TryCancel();
  EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::CANCELLED);
  s.reset();
  ctx.reset();
  // The proposals commit after the stream is gone; their answers go nowhere.
  net_.CutOff(2, false);
  // The messages were committed all the same, and the server still serves new streams.
  grpc::ClientContext ctx2;
  std::unique_ptr<Stream> s2 = stub_->PublishStream(&ctx2);
  ASSERT_TRUE(s2->Write(Request(3, {TopicOf(0)})));
  std::vector<v1::StreamedPublishAnswer> got;
  ASSERT_TRUE(ReadAnswers(s2.get(), 1, &got));
  EXPECT_EQ(got[0].request_id(), 3u);
  ASSERT_EQ(got[0].publish().results_size(), 1);
  EXPECT_FALSE(got[0].publish().results(0).has_error());
  EXPECT_EQ(got[0].publish().results(0).offset(), 2u)
      << "the cancelled stream's message comes first";
  ASSERT_TRUE(s2->WritesDone());
  EXPECT_TRUE(s2->Finish().ok());
  // Shutdown waits for every stream's reactor to finish (cancelling them at the deadline): the
  // cancelled stream's must have finished already.
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown(std::chrono::system_clock::now() + 2s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  server_.reset();
}

}  // namespace
}  // namespace herald::cluster
