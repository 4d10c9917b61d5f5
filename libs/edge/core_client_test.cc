// CoreClient against a real single-node core (CoreNode with every partition, gRPC on loopback).
#include "libs/edge/core_client.h"

#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "libs/cluster/core_node.h"
#include "libs/common/partitioning.h"

namespace herald::edge {
namespace {

using namespace std::chrono_literals;

class CoreClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-core-client-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    cluster::CoreNodeConfig c;
    c.listen = "127.0.0.1:0";
    c.partitions = 4;
    c.replication_factor = 1;
    c.storage_sync = false;
    c.raft_tick = absl::Milliseconds(10);
    node_ = std::make_unique<cluster::CoreNode>(c);
    ASSERT_TRUE(node_->Start(dir_).ok());
    CoreClientOptions o;
    o.addresses = Addresses();
    o.partitions = 4;
    o.edge_id = "test-edge";
    client_ = std::make_unique<CoreClient>(o, [this](const std::vector<v1::Message*>& ms) {
      std::lock_guard<std::mutex> l(mu_);
      for (const v1::Message* m : ms) received_[m->topic()].push_back(m->payload());
      cv_.notify_all();
    });
    ASSERT_TRUE(client_->Start().ok());
    ASSERT_TRUE(client_->WaitUntilAttached(10s));
  }
  void TearDown() override {
    client_.reset();
    node_.reset();
    std::filesystem::remove_all(dir_);
  }

  // The core addresses the client is given (node id i is addresses[i-1]).
  virtual std::vector<std::string> Addresses() { return {node_->address()}; }

  void AddFilter(const std::string& f) {
    std::promise<void> applied;
    client_->AddFilter(f, [&] { applied.set_value(); });
    ASSERT_EQ(applied.get_future().wait_for(10s), std::future_status::ready);
  }

  size_t ReceivedCount() {
    size_t n = 0;
    for (auto& [t, v] : received_) n += v.size();
    return n;
  }

  std::string dir_;
  std::unique_ptr<cluster::CoreNode> node_;
  std::unique_ptr<CoreClient> client_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<std::string>> received_;
};

TEST_F(CoreClientTest, ConcurrentPublishesAreCommittedOnceAndDeliveredInOrder) {
  AddFilter("t/#");
  constexpr int kThreads = 4, kPerThread = 100;
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Each thread publishes to its own topic, one message at a time, without waiting: many
      // are queued while a request is in flight and go out batched.
      std::vector<std::promise<void>> done(kPerThread);
      for (int i = 0; i < kPerThread; ++i) {
        v1::Message m;
        m.set_topic("t/" + std::to_string(t));
        m.set_payload(std::to_string(i));
        m.set_qos(v1::QOS_AT_LEAST_ONCE);
        client_->Publish({m}, [&, i](const absl::Status& s) {
          (s.ok() ? ok : failed).fetch_add(1);
          done[i].set_value();
        });
      }
      for (auto& d : done) d.get_future().wait();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), kThreads * kPerThread);
  EXPECT_EQ(failed.load(), 0);
  std::unique_lock<std::mutex> l(mu_);
  ASSERT_TRUE(cv_.wait_for(l, 10s, [&] { return ReceivedCount() >= kThreads * kPerThread; }));
  for (int t = 0; t < kThreads; ++t) {
    const auto& got = received_["t/" + std::to_string(t)];
    ASSERT_EQ(got.size(), static_cast<size_t>(kPerThread));
    for (int i = 0; i < kPerThread; ++i) EXPECT_EQ(got[i], std::to_string(i));
  }
}

TEST_F(CoreClientTest, RemovedFilterIsNoLongerDelivered) {
  AddFilter("a/+");
  AddFilter("a/+");  // a second reference
  std::promise<absl::Status> p1;
  v1::Message m;
  m.set_topic("a/1");
  m.set_payload("one");
  client_->Publish({m}, [&](const absl::Status& s) { p1.set_value(s); });
  ASSERT_TRUE(p1.get_future().get().ok());
  {
    std::unique_lock<std::mutex> l(mu_);
    ASSERT_TRUE(cv_.wait_for(l, 10s, [&] { return ReceivedCount() == 1; }));
  }
  client_->RemoveFilter("a/+");
  client_->RemoveFilter("a/+");  // last reference: the stream drops it
  AddFilter("marker");           // changes apply in order: after this, a/+ is gone
  for (const char* topic : {"a/2", "marker"}) {
    std::promise<absl::Status> p;
    m.set_topic(topic);
    client_->Publish({m}, [&](const absl::Status& s) { p.set_value(s); });
    ASSERT_TRUE(p.get_future().get().ok());
  }
  std::unique_lock<std::mutex> l(mu_);
  ASSERT_TRUE(cv_.wait_for(l, 10s, [&] { return received_.count("marker") > 0; }));
  EXPECT_EQ(received_["a/1"].size(), 1u);
  EXPECT_EQ(received_.count("a/2"), 0u);
}

// Node 2 never answers (connection refused: killed, or cut off). The partitions first given to
// its Subscribe stream (p % 2 == 1) move to node 1 and are delivered from there.
class CoreClientDeadNodeTest : public CoreClientTest {
 protected:
  std::vector<std::string> Addresses() override {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), len);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);  // nothing listens there now
    return {node_->address(), "127.0.0.1:" + std::to_string(ntohs(a.sin_port))};
  }
};

TEST_F(CoreClientDeadNodeTest, PartitionsOfAnUnreachableNodeAreDeliveredFromAnother) {
  // SetUp waited until every partition was attached: node 1 holds all four.
  AddFilter("d/#");
  std::set<uint32_t> partitions;
  for (int i = 0; partitions.size() < 4; ++i) {
    v1::Message m;
    m.set_topic("d/" + std::to_string(i));
    m.set_payload("x");
    if (!partitions.insert(PartitionFor(m.topic(), 4)).second) continue;
    std::promise<absl::Status> done;
    client_->Publish({m}, [&](const absl::Status& s) { done.set_value(s); });
    ASSERT_TRUE(done.get_future().get().ok()) << m.topic();
  }
  std::unique_lock<std::mutex> l(mu_);
  ASSERT_TRUE(cv_.wait_for(l, 10s, [&] { return ReceivedCount() >= 4; }))
      << ReceivedCount() << " of 4 partitions delivered";
  EXPECT_EQ(ReceivedCount(), 4u);
}

// The live position a retained lookup reports. A retained message past it is one live delivery
// still owes the edge; one at or before it was evaluated already. A partition a node has not
// resolved never yields a position.
TEST_F(CoreClientTest, RetainedLookupSaysHowFarLiveDeliveryWasEvaluated) {
  for (uint32_t p = 0; p < 4; ++p) {
    auto live = client_->LivePosition(p);
    if (live.has_value()) {
      EXPECT_NE(live->epoch(), 0u) << "partition " << p;
    }
  }
  auto publish = [&](const std::string& payload) {
    v1::Message m;
    m.set_topic("r/a");
    m.set_payload(payload);
    m.set_retain(true);
    std::promise<absl::Status> done;
    client_->Publish({m}, [&](const absl::Status& s) { done.set_value(s); });
    return done.get_future().get();
  };
  auto lookup = [&] {
    std::promise<absl::StatusOr<RetainedMessages>> done;
    client_->GetRetained({"r/#"}, 100,
                         [&](absl::StatusOr<RetainedMessages> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  auto received = [&](const std::string& payload) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, 10s, [&] {
      const auto& got = received_["r/a"];
      return std::find(got.begin(), got.end(), payload) != got.end();
    });
  };
  const uint32_t p = PartitionFor("r/a", 4);
  ASSERT_TRUE(publish("one").ok());
  AddFilter("r/#");
  auto live = client_->LivePosition(p);
  ASSERT_TRUE(live.has_value());  // the filter's switch position at least
  EXPECT_NE(live->epoch(), 0u);
  auto first = lookup();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->messages.size(), 1u);
  const uint64_t one = first->messages[0].offset();
  EXPECT_EQ(first->messages[0].partition(), p);
  ASSERT_EQ(first->live_through.count(p), 1u);
  // The core may switch filters before it has read "one": then "one" is delivered live.
  if (first->live_through.at(p) < one) {
    EXPECT_TRUE(received("one"));
  }

  // A newer value, delivered live: once the edge has evaluated it, the lookup's position
  // covers it.
  ASSERT_TRUE(publish("two").ok());
  ASSERT_TRUE(received("two"));
  auto second = lookup();
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->messages.size(), 1u);
  EXPECT_EQ(second->messages[0].payload(), "two");
  const uint64_t two = second->messages[0].offset();
  EXPECT_GT(two, one);
  for (int i = 0; i < 500 && client_->LivePosition(p)->offset() < two; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  auto third = lookup();
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_EQ(third->live_through.count(p), 1u);
  EXPECT_GE(third->live_through.at(p), two);
}

// A core stand-in whose publish behaviour the tests choose: unary Publish only (an older core),
// or a PublishStream that breaks its first stream, or leaves one request unanswered.
class FakeCore final : public v1::Broker::Service {
 public:
  enum class Mode { kUnaryOnly, kBreakFirstStream, kIgnoreFirstRequest, kPlain };
  explicit FakeCore(Mode mode) : mode_(mode) {}

  grpc::Status Publish(grpc::ServerContext*, const v1::PublishRequest* request,
                       v1::PublishResponse* response) override {
    std::lock_guard<std::mutex> l(mu_);
    ++unary_calls;
    Answer(*request, response);
    return grpc::Status::OK;
  }
  grpc::Status PublishStream(grpc::ServerContext*,
                             grpc::ServerReaderWriter<v1::PublishStreamResponse,
                                                      v1::PublishStreamRequest>* stream) override {
    int number;
    {
      std::lock_guard<std::mutex> l(mu_);
      number = ++streams;
      if (mode_ == Mode::kUnaryOnly) {
        return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no PublishStream here");
      }
    }
    v1::PublishStreamRequest req;
    while (stream->Read(&req)) {
      v1::PublishStreamResponse resp;
      {
        std::lock_guard<std::mutex> l(mu_);
        ++stream_messages;
        largest_message = std::max(largest_message, req.requests_size());
        for (const v1::StreamedPublish& r : req.requests()) {
          ++stream_requests;
          if (mode_ == Mode::kBreakFirstStream && number == 1) {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream broken");
          }
          if (mode_ == Mode::kIgnoreFirstRequest && stream_requests == 1) continue;
          v1::StreamedPublishAnswer* a = resp.add_answers();
          a->set_request_id(r.request_id());
          Answer(r.publish(), a->mutable_publish());
        }
      }
      if (resp.answers_size() > 0 && !stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }

  std::mutex mu_;
  int unary_calls = 0, streams = 0, stream_requests = 0;
  int stream_messages = 0, largest_message = 0;  // requests per stream message
  // (producer id, sequence) of every message appended, in order; a resent one is not appended
  // again, as the core's dedup would.
  std::vector<std::pair<uint64_t, uint64_t>> appended;

 private:
  void Answer(const v1::PublishRequest& request, v1::PublishResponse* response) {
    for (const v1::Message& m : request.messages()) {
      v1::PublishResult* r = response->add_results();
      r->set_partition(PartitionFor(m.topic(), 4));
      auto key = std::make_pair(m.producer_id(), m.sequence());
      if (std::find(appended.begin(), appended.end(), key) == appended.end()) {
        appended.push_back(key);
      } else {
        r->set_duplicate(true);
      }
      r->set_offset(appended.size());
    }
  }
  const Mode mode_;
};

class CoreClientFakeCoreTest : public ::testing::TestWithParam<FakeCore::Mode> {
 protected:
  void SetUp() override {
    core_ = std::make_unique<FakeCore>(GetParam());
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(core_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    CoreClientOptions o;
    o.addresses = {"127.0.0.1:" + std::to_string(port)};
    o.partitions = 4;
    o.publish_request_timeout = 1s;
    client_ = std::make_unique<CoreClient>(o, [](const std::vector<v1::Message*>&) {});
    ASSERT_TRUE(client_->Start().ok());
  }
  void TearDown() override {
    client_.reset();
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }
  absl::Status PublishOne(const std::string& payload) {
    v1::Message m;
    m.set_topic("f/1");
    m.set_payload(payload);
    std::promise<absl::Status> done;
    client_->Publish({m}, [&](const absl::Status& s) { done.set_value(s); });
    auto f = done.get_future();
    if (f.wait_for(10s) != std::future_status::ready) return absl::DeadlineExceededError("hung");
    return f.get();
  }

  std::unique_ptr<FakeCore> core_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<CoreClient> client_;
};

// Whatever the core does with the stream, every publish succeeds and each message is appended
// once, in order.
TEST_P(CoreClientFakeCoreTest, PublishesAreCommittedOnceWhateverTheStreamDoes) {
  for (int i = 0; i < 5; ++i) {
    absl::Status s = PublishOne("p" + std::to_string(i));
    ASSERT_TRUE(s.ok()) << i << ": " << s;
  }
  std::lock_guard<std::mutex> l(core_->mu_);
  ASSERT_EQ(core_->appended.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(core_->appended[i].second, i + 1);
  // (A slow machine may add resends of requests answered later than the timeout: at least.)
  switch (GetParam()) {
    case FakeCore::Mode::kUnaryOnly:  // one refused stream, then unary calls only (for a minute)
      EXPECT_EQ(core_->streams, 1);
      EXPECT_GE(core_->unary_calls, 5);
      break;
    case FakeCore::Mode::kBreakFirstStream:  // the first request again on a second stream
      EXPECT_GE(core_->streams, 2);
      EXPECT_GE(core_->stream_requests, 6);
      EXPECT_EQ(core_->unary_calls, 0);
      break;
    case FakeCore::Mode::kIgnoreFirstRequest:  // given up after the timeout, sent again
      EXPECT_GE(core_->stream_requests, 6);
      EXPECT_EQ(core_->unary_calls, 0);
      break;
    case FakeCore::Mode::kPlain:
      break;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, CoreClientFakeCoreTest,
                         ::testing::Values(FakeCore::Mode::kUnaryOnly,
                                           FakeCore::Mode::kBreakFirstStream,
                                           FakeCore::Mode::kIgnoreFirstRequest));

// What queued on a lane while its stream was busy goes out in messages of at most
// kMessageRequests requests, every request answered once.
TEST(PublishLaneTest, QueuedRequestsGoOutInBoundedMessages) {
  FakeCore core(FakeCore::Mode::kPlain);
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&core);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  ASSERT_NE(port, 0);
  auto stub = v1::Broker::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  struct Counter final : PublishLane::Waiter {
    std::atomic<int>* ok = nullptr;
    std::atomic<int> calls{0};
    void Answered(const grpc::Status& status, v1::PublishResponse* r) override {
      calls.fetch_add(1);
      if (status.ok() && r != nullptr && r->results_size() == 1) ok->fetch_add(1);
    }
  };
  constexpr int kRequests = 600;
  std::atomic<int> ok{0};
  std::vector<Counter> waiters(kRequests);
  std::promise<void> gone;
  auto lane = std::make_shared<PublishLane>(
      stub.get(), [](PublishLane*, const grpc::Status&) {}, [&] { gone.set_value(); });
  // All sent before the stream starts: the first goes alone, the rest queue behind it.
  for (int i = 0; i < kRequests; ++i) {
    waiters[i].ok = &ok;
    v1::PublishRequest r;
    v1::Message* m = r.add_messages();
    m->set_topic("q/1");
    m->set_producer_id(7);
    m->set_sequence(static_cast<uint64_t>(i) + 1);
    lane->Send(static_cast<uint64_t>(i) + 1, &r, &waiters[i]);
  }
  lane->Start(lane);
  for (int i = 0; i < 1000 && ok.load() < kRequests; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(ok.load(), kRequests);
  {
    std::lock_guard<std::mutex> l(core.mu_);
    EXPECT_EQ(core.stream_requests, kRequests);
    EXPECT_LE(core.largest_message, PublishLane::kMessageRequests);
    EXPECT_GT(core.largest_message, 1) << "queued requests share messages";
    EXPECT_GE(core.stream_messages, 1 + (kRequests - 1 + 255) / 256);
  }
  lane->Cancel();
  lane.reset();
  ASSERT_EQ(gone.get_future().wait_for(10s), std::future_status::ready);
  for (const Counter& w : waiters) EXPECT_EQ(w.calls.load(), 1);
  server->Shutdown(std::chrono::system_clock::now() + 1s);
}

}  // namespace
}  // namespace herald::edge
