// MqttServer against real sockets on loopback with a fake core that commits every publish at
// once and hands it straight back as a delivery.
#include "libs/edge/mqtt_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <set>
#include <thread>

#include "libs/net/test_util.h"
#include "libs/protocol/mqtt/codec.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::edge {
namespace {

using mqtt::QoS;
using mqtt::ReasonCode;
using mqtt::Version;

class FakeCore : public CoreApi {
 public:
  void Publish(std::vector<v1::Message> messages,
               std::function<void(const absl::Status&)> done) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& m : messages) {
        if (stamp_offsets_) {
          m.set_partition(0);
          m.set_offset(++last_offset_);
        }
        published_.push_back(m);
        if (m.retain()) {
          if (m.payload().empty()) {
            retained_.erase(m.topic());
          } else {
            retained_[m.topic()] = m;
          }
        }
      }
      if (fail_) {
        done(absl::UnavailableError("fake failure"));
        return;
      }
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (defer_deliveries_) {
        for (auto& m : messages) deferred_.push_back(std::move(m));
        if (done) done(absl::OkStatus());
        return;
      }
    }
    std::vector<v1::Message*> ptrs;
    for (auto& m : messages) {
      // As the core does: name the shared subscriptions the message is given to.
      std::lock_guard<std::mutex> l(mu_);
      for (const auto& [f, refs] : filters_) {
        mqtt::SharedSubscription shared;
        if (mqtt::IsSharedSubscription(f) && !mqtt::ParseSharedSubscription(f, &shared) &&
            mqtt::TopicMatches(shared.topic_filter, m.topic())) {
          m.add_shared_subscriptions(f);
        }
      }
      ptrs.push_back(&m);
    }
    if (server_ != nullptr) server_->Deliver(ptrs);
    if (done) done(absl::OkStatus());
  }
  void AddFilter(const std::string& filter, std::function<void()> applied) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++filters_[filter];
    }
    applied();
  }
  void RemoveFilter(const std::string& filter) override {
    std::lock_guard<std::mutex> l(mu_);
    if (--filters_[filter] == 0) filters_.erase(filter);
  }
  uint32_t partitions() const override { return 8; }
  std::optional<v1::PartitionPosition> LivePosition(uint32_t) override { return std::nullopt; }
  void Fetch(uint32_t, const v1::PartitionPosition&, std::vector<std::string>, uint32_t,
             std::function<void(absl::StatusOr<v1::FetchResult>)> done) override {
    done(absl::UnimplementedError("fake core has no log"));
  }
  void GetRetained(std::vector<std::string> filters, uint32_t,
                   std::function<void(absl::StatusOr<RetainedMessages>)> done) override {
    RetainedMessages out;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (hold_retained_) {
        held_.emplace_back(std::move(filters), std::move(done));
        return;
      }
      for (const auto& [topic, m] : retained_) {
        for (const auto& f : filters) {
          if (mqtt::TopicMatches(f, topic)) {
            out.messages.push_back(m);
            break;
          }
        }
      }
    }
    done(std::move(out));
  }
  void OpenSession(v1::OpenSessionRequest,
                   std::function<void(absl::StatusOr<v1::OpenSessionResponse>)> done) override {
    done(absl::UnavailableError("fake core has no sessions"));
  }
  void UpdateSession(v1::SessionUpdate, std::function<void(const absl::Status&)> done) override {
    done(absl::UnavailableError("fake core has no sessions"));
  }
  void CloseSession(v1::CloseSessionRequest,
                    std::function<void(const absl::Status&)> done) override {
    done(absl::UnavailableError("fake core has no sessions"));
  }
  void GetSession(const std::string&,
                  std::function<void(absl::StatusOr<v1::Session>)> done) override {
    done(absl::NotFoundError("fake core has no sessions"));
  }
  size_t PublishedCount() {
    std::lock_guard<std::mutex> l(mu_);
    return published_.size();
  }
  // Published messages get partition 0 and offsets 1, 2, ...
  void StampOffsets() {
    std::lock_guard<std::mutex> l(mu_);
    stamp_offsets_ = true;
  }
  // Retained lookups wait for AnswerRetained.
  void HoldRetainedLookups() {
    std::lock_guard<std::mutex> l(mu_);
    hold_retained_ = true;
  }
  size_t HeldLookups() {
    std::lock_guard<std::mutex> l(mu_);
    return held_.size();
  }
  // Answers the oldest held lookup from the retained messages stored now, saying that live
  // delivery of partition 0 was evaluated through `live_through`.
  void AnswerRetained(uint64_t live_through) {
    std::pair<std::vector<std::string>, std::function<void(absl::StatusOr<RetainedMessages>)>> h;
    RetainedMessages out;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (held_.empty()) return;
      h = std::move(held_.front());
      held_.erase(held_.begin());
      for (const auto& [topic, m] : retained_) {
        for (const auto& f : h.first) {
          if (mqtt::TopicMatches(f, topic)) {
            out.messages.push_back(m);
            break;
          }
        }
      }
    }
    out.live_through[0] = live_through;
    h.second(std::move(out));
  }
  // Publishes are committed (and acknowledged) but reach subscribers at FlushDeliveries only.
  void DeferDeliveries(bool on) {
    std::lock_guard<std::mutex> l(mu_);
    defer_deliveries_ = on;
  }
  void FlushDeliveries() {
    std::vector<v1::Message> batch;
    {
      std::lock_guard<std::mutex> l(mu_);
      batch = std::move(deferred_);
      deferred_.clear();
    }
    std::vector<v1::Message*> ptrs;
    for (auto& m : batch) ptrs.push_back(&m);
    if (server_ != nullptr) server_->Deliver(ptrs);
  }
  int FilterRefs(const std::string& f) {
    std::lock_guard<std::mutex> l(mu_);
    return filters_.count(f) ? filters_[f] : 0;
  }
  void set_fail(bool f) {
    std::lock_guard<std::mutex> l(mu_);
    fail_ = f;
  }

  MqttServer* server_ = nullptr;

 private:
  std::mutex mu_;
  std::vector<v1::Message> published_;
  std::map<std::string, int> filters_;
  std::map<std::string, v1::Message> retained_;
  bool fail_ = false;
  bool stamp_offsets_ = false;
  uint64_t last_offset_ = 0;
  bool hold_retained_ = false;
  std::vector<
      std::pair<std::vector<std::string>, std::function<void(absl::StatusOr<RetainedMessages>)>>>
      held_;
  bool defer_deliveries_ = false;
  std::vector<v1::Message> deferred_;
};

// A blocking MQTT client on a raw socket.
class Client {
 public:
  Client(const net::SocketAddress& address, Version version)
      : version_(version),
        fd_(net::testing::ConnectBlocking(address, 0, std::chrono::milliseconds(3000))),
        decoder_({.role = mqtt::Role::kClient, .version = version}) {}
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }

  void Send(const mqtt::Packet& p) {
    std::string out;
    ASSERT_TRUE(mqtt::Encode(p, version_, &out).ok());
    ASSERT_TRUE(net::testing::WriteAll(fd_, out));
  }
  void SendRaw(std::string_view bytes) { ASSERT_TRUE(net::testing::WriteAll(fd_, bytes)); }

  // The next packet, or nullopt on EOF / timeout (3 s).
  std::optional<mqtt::Packet> Read() {
    while (packets_.empty()) {
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return std::nullopt;
      if (decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)), &packets_)) {
        return std::nullopt;
      }
    }
    mqtt::Packet p = std::move(packets_.front());
    packets_.erase(packets_.begin());
    return p;
  }
  template <typename T>
  T Expect() {
    std::optional<mqtt::Packet> p = Read();
    EXPECT_TRUE(p.has_value());
    if (!p) return T{};
    EXPECT_TRUE(std::holds_alternative<T>(*p)) << "got " << mqtt::PacketTypeName(mqtt::TypeOf(*p));
    if (!std::holds_alternative<T>(*p)) return T{};
    return std::get<T>(*p);
  }
  // Whether the server closed the connection (EOF before any packet).
  bool Closed() {
    std::optional<mqtt::Packet> p = Read();
    return !p.has_value();
  }

  mqtt::Connack Connect(std::string client_id, mqtt::Properties props = {}) {
    Send(mqtt::Connect{
        .keep_alive = 30, .properties = std::move(props), .client_id = std::move(client_id)});
    return Expect<mqtt::Connack>();
  }
  mqtt::Suback Subscribe(const std::string& filter, QoS qos, uint16_t id = 1) {
    Send(mqtt::Subscribe{.packet_id = id,
                         .subscriptions = {{.topic_filter = filter, .max_qos = qos}}});
    return Expect<mqtt::Suback>();
  }

 private:
  Version version_;
  int fd_;
  mqtt::Decoder decoder_;
  std::vector<mqtt::Packet> packets_;
};

class MqttServerTest : public ::testing::TestWithParam<Version> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loops_.Start().ok());
    MqttServerOptions o;
    o.listen = "127.0.0.1:0";
    o.max_queued_messages = 4;
    o.sys_interval = std::chrono::milliseconds(0);
    server_ = std::make_unique<MqttServer>(o, &core_);
    core_.server_ = server_.get();
    ASSERT_TRUE(server_->Start(loops_).ok());
  }
  void TearDown() override {
    server_->Stop();
    loops_.Stop();
  }
  std::unique_ptr<Client> NewClient(Version v) {
    return std::make_unique<Client>(server_->address(), v);
  }
  Version version() const { return GetParam(); }
  // Waits until the fake core holds `n` retained lookups (they start after the SUBACK).
  void WaitForHeldLookups(size_t n) {
    for (int i = 0; i < 300 && core_.HeldLookups() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(core_.HeldLookups(), n);
  }

  net::LoopGroup loops_{2, "mqtt-test"};
  FakeCore core_;
  std::unique_ptr<MqttServer> server_;
};

TEST_P(MqttServerTest, SubscriberReceivesQoS1PublishAfterPublisherGetsPuback) {
  auto sub = NewClient(version());
  EXPECT_EQ(sub->Connect("sub").reason_code, ReasonCode::kSuccess);
  mqtt::Suback sa = sub->Subscribe("a/#", QoS::kAtLeastOnce);
  ASSERT_EQ(sa.reason_codes.size(), 1u);
  EXPECT_EQ(sa.reason_codes[0], ReasonCode::kGrantedQoS1);
  EXPECT_EQ(core_.FilterRefs("a/#"), 1);

  auto pub = NewClient(version());
  pub->Connect("pub");
  pub->Send(
      mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "a/b", .packet_id = 7, .payload = "hi"});
  EXPECT_EQ(pub->Expect<mqtt::Puback>().packet_id, 7);
  pub->Send(mqtt::Publish{.topic = "other", .payload = "not for sub"});
  pub->Send(mqtt::Publish{.topic = "a/c", .payload = "qos0"});

  auto m1 = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(m1.topic, "a/b");
  EXPECT_EQ(m1.payload, "hi");
  EXPECT_EQ(m1.qos, QoS::kAtLeastOnce);
  EXPECT_NE(m1.packet_id, 0);
  sub->Send(mqtt::Puback{.packet_id = m1.packet_id});
  auto m2 = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(m2.topic, "a/c");
  EXPECT_EQ(m2.qos, QoS::kAtMostOnce);

  sub->Send(mqtt::Unsubscribe{.packet_id = 2, .topic_filters = {"a/#", "x"}});
  auto ua = sub->Expect<mqtt::Unsuback>();
  EXPECT_EQ(ua.packet_id, 2);
  if (version() == Version::kV5) {
    EXPECT_EQ(ua.reason_codes,
              (std::vector<ReasonCode>{ReasonCode::kSuccess, ReasonCode::kNoSubscriptionExisted}));
  }
  EXPECT_EQ(core_.FilterRefs("a/#"), 0);
  sub->Send(mqtt::Pingreq{});
  sub->Expect<mqtt::Pingresp>();
}

TEST_P(MqttServerTest, InflightWindowHoldsBackMessagesUntilPuback) {
  auto sub = NewClient(version());
  mqtt::Properties props;
  props.receive_maximum = 2;
  sub->Connect("sub", props);
  sub->Subscribe("t", QoS::kAtLeastOnce);
  auto pub = NewClient(version());
  pub->Connect("pub");
  for (int i = 0; i < 3; ++i) {
    pub->Send(mqtt::Publish{.topic = "t", .payload = std::to_string(i)});
  }
  // QoS 0 publishes are delivered at QoS 0: not windowed.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(sub->Expect<mqtt::Publish>().payload, std::to_string(i));
  for (int i = 0; i < 3; ++i) {
    pub->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce,
                            .topic = "t",
                            .packet_id = static_cast<uint16_t>(i + 1),
                            .payload = std::to_string(i)});
    pub->Expect<mqtt::Puback>();
  }
  auto a = sub->Expect<mqtt::Publish>();
  auto b = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(a.payload, "0");
  EXPECT_EQ(b.payload, "1");
  if (version() == Version::kV5) {
    // Receive Maximum 2: the third waits for a PUBACK.
    sub->Send(mqtt::Pingreq{});
    sub->Expect<mqtt::Pingresp>();
  }
  sub->Send(mqtt::Puback{.packet_id = a.packet_id});
  EXPECT_EQ(sub->Expect<mqtt::Publish>().payload, "2");
}

TEST_P(MqttServerTest, SlowSubscriberIsDisconnectedWhenItsQueueIsFull) {
  auto sub = NewClient(version());
  mqtt::Properties props;
  props.receive_maximum = 1;
  sub->Connect("sub", props);
  sub->Subscribe("t", QoS::kAtLeastOnce);
  auto pub = NewClient(version());
  pub->Connect("pub");
  // Window 1 in 5.0 (64 in 3.1.1) plus a queue of 4.
  int n = version() == Version::kV5 ? 10 : 80;
  for (int i = 0; i < n; ++i) {
    pub->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce,
                            .topic = "t",
                            .packet_id = static_cast<uint16_t>(i + 1),
                            .payload = "x"});
    pub->Expect<mqtt::Puback>();
  }
  bool closed = false;
  for (int i = 0; i < n + 1; ++i) {
    std::optional<mqtt::Packet> p = sub->Read();
    if (!p) {
      closed = true;
      break;
    }
    if (auto* d = std::get_if<mqtt::Disconnect>(&*p)) {
      EXPECT_EQ(d->reason_code, ReasonCode::kQuotaExceeded);
      closed = sub->Closed();
      break;
    }
  }
  EXPECT_TRUE(closed);
}

TEST_P(MqttServerTest, QoS2IsExactlyOnceInBothDirections) {
  auto sub = NewClient(version());
  sub->Connect("sub");
  EXPECT_EQ(sub->Subscribe("q2/#", QoS::kExactlyOnce).reason_codes[0], ReasonCode::kGrantedQoS2);
  auto pub = NewClient(version());
  pub->Connect("pub");
  mqtt::Publish p{.qos = QoS::kExactlyOnce, .topic = "q2/a", .packet_id = 7, .payload = "once"};
  pub->Send(p);
  EXPECT_EQ(pub->Expect<mqtt::Pubrec>().packet_id, 7);
  // A resent PUBLISH (DUP) before PUBREL is acknowledged again and not published again.
  p.dup = true;
  pub->Send(p);
  EXPECT_EQ(pub->Expect<mqtt::Pubrec>().packet_id, 7);
  pub->Send(mqtt::Pubrel{.packet_id = 7});
  EXPECT_EQ(pub->Expect<mqtt::Pubcomp>().packet_id, 7);

  auto got = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(got.qos, QoS::kExactlyOnce);
  EXPECT_EQ(got.payload, "once");
  sub->Send(mqtt::Pubrec{.packet_id = got.packet_id});
  EXPECT_EQ(sub->Expect<mqtt::Pubrel>().packet_id, got.packet_id);
  sub->Send(mqtt::Pubcomp{.packet_id = got.packet_id});
  // Nothing else arrives: the duplicate PUBLISH was not delivered.
  sub->Send(mqtt::Pingreq{});
  sub->Expect<mqtt::Pingresp>();
  EXPECT_EQ(core_.PublishedCount(), 1u);
}

TEST_P(MqttServerTest, RetainedMessageIsSentOnSubscribeAndDeletedByEmptyPayload) {
  auto pub = NewClient(version());
  pub->Connect("pub");
  pub->Send(mqtt::Publish{
      .qos = QoS::kAtLeastOnce, .retain = true, .topic = "r/1", .packet_id = 1, .payload = "v1"});
  pub->Expect<mqtt::Puback>();
  auto sub = NewClient(version());
  sub->Connect("sub");
  sub->Subscribe("r/+", QoS::kAtLeastOnce);
  auto got = sub->Expect<mqtt::Publish>();
  EXPECT_TRUE(got.retain);
  EXPECT_EQ(got.payload, "v1");
  sub->Send(mqtt::Puback{.packet_id = got.packet_id});
  // Live messages carry retain 0 unless Retain As Published.
  pub->Send(mqtt::Publish{
      .qos = QoS::kAtLeastOnce, .retain = true, .topic = "r/1", .packet_id = 2, .payload = ""});
  pub->Expect<mqtt::Puback>();
  auto live = sub->Expect<mqtt::Publish>();
  EXPECT_FALSE(live.retain);
  sub->Send(mqtt::Puback{.packet_id = live.packet_id});
  auto late = NewClient(version());
  late->Connect("late");
  late->Subscribe("r/+", QoS::kAtLeastOnce);
  late->Send(mqtt::Pingreq{});
  late->Expect<mqtt::Pingresp>();  // no retained message: it was deleted
}

// §3.3.1.3: RETAIN 1 only for a retained message sent because of a new subscription. The lookup
// runs after the SUBACK; what was published once the subscription was in place is delivered
// live, once, whether the lookup answers before or after the live copy arrives.
TEST_P(MqttServerTest, RetainedLookupAnsweredLateDoesNotRepeatLiveMessages) {
  core_.StampOffsets();
  core_.HoldRetainedLookups();
  auto pub = NewClient(version());
  pub->Connect("pub");
  auto publish_retained = [&](const std::string& topic, size_t published) {
    pub->Send(mqtt::Publish{.retain = true, .topic = topic, .payload = topic});
    for (int i = 0; i < 300 && core_.PublishedCount() < published; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(core_.PublishedCount(), published);
  };
  auto expect_only = [](Client& c, std::vector<std::pair<std::string, bool>> want) {
    for (const auto& [topic, retain] : want) {
      auto p = c.Expect<mqtt::Publish>();
      EXPECT_EQ(p.topic, topic);
      EXPECT_EQ(p.retain, retain) << topic;
    }
    c.Send(mqtt::Pingreq{});
    c.Expect<mqtt::Pingresp>();  // and nothing else
  };
  ASSERT_NO_FATAL_FAILURE(publish_retained("t/old", 1));  // offset 1, before anyone subscribed

  // The live copy arrives first, the lookup's answer after it.
  auto sub = NewClient(version());
  sub->Connect("sub");
  sub->Subscribe("t/#", QoS::kAtMostOnce);
  ASSERT_NO_FATAL_FAILURE(WaitForHeldLookups(1));
  ASSERT_NO_FATAL_FAILURE(publish_retained("t/new", 2));
  auto live = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(live.topic, "t/new");
  EXPECT_FALSE(live.retain);
  core_.AnswerRetained(/*live_through=*/2);
  expect_only(*sub, {{"t/old", true}});

  // The lookup's answer arrives first, the live copy after it (the edge has evaluated live
  // delivery through offset 2 only).
  auto sub2 = NewClient(version());
  sub2->Connect("sub2");
  sub2->Subscribe("t/#", QoS::kAtMostOnce);
  ASSERT_NO_FATAL_FAILURE(WaitForHeldLookups(1));
  core_.DeferDeliveries(true);
  ASSERT_NO_FATAL_FAILURE(publish_retained("t/third", 3));
  core_.AnswerRetained(/*live_through=*/2);
  expect_only(*sub2, {{"t/new", true}, {"t/old", true}});
  core_.DeferDeliveries(false);
  core_.FlushDeliveries();
  expect_only(*sub2, {{"t/third", false}});
  expect_only(*sub, {{"t/third", false}});
}

// Two lookups under way for one session: each leaves out only what arrived live after it began.
// A re-SUBSCRIBE (Retain Handling 0) gets the topic's retained message again even though its
// copy arrived live before (§3.8.4: retained messages are sent for a replaced subscription).
TEST_P(MqttServerTest, OverlappingRetainedLookupsEachLeaveOutWhatArrivedAfterThem) {
  core_.StampOffsets();
  core_.HoldRetainedLookups();
  auto pub = NewClient(version());
  pub->Connect("pub");
  auto sub = NewClient(version());
  sub->Connect("sub");
  sub->Subscribe("t/#", QoS::kAtMostOnce, 1);
  ASSERT_NO_FATAL_FAILURE(WaitForHeldLookups(1));  // lookup A
  pub->Send(mqtt::Publish{.retain = true, .topic = "t/x", .payload = "x"});
  auto live = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(live.topic, "t/x");
  EXPECT_FALSE(live.retain);
  sub->Subscribe("t/#", QoS::kAtMostOnce, 2);
  ASSERT_NO_FATAL_FAILURE(WaitForHeldLookups(2));  // lookup B
  core_.AnswerRetained(/*live_through=*/1);  // A: t/x came live after it began
  sub->Send(mqtt::Pingreq{});
  sub->Expect<mqtt::Pingresp>();
  core_.AnswerRetained(/*live_through=*/1);  // B: t/x came before it began
  auto again = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(again.topic, "t/x");
  EXPECT_TRUE(again.retain);
  sub->Send(mqtt::Pingreq{});
  sub->Expect<mqtt::Pingresp>();
}

TEST_P(MqttServerTest, SharedSubscriptionGivesEachMessageToOneMember) {
  auto a = NewClient(version());
  a->Connect("a");
  auto b = NewClient(version());
  b->Connect("b");
  EXPECT_EQ(a->Subscribe("$share/g/s/#", QoS::kAtMostOnce).reason_codes[0], ReasonCode::kSuccess);
  EXPECT_EQ(b->Subscribe("$share/g/s/#", QoS::kAtMostOnce).reason_codes[0], ReasonCode::kSuccess);
  auto pub = NewClient(version());
  pub->Connect("pub");
  for (int i = 0; i < 4; ++i) {
    pub->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce,
                            .topic = "s/x",
                            .packet_id = static_cast<uint16_t>(i + 1),
                            .payload = std::to_string(i)});
    pub->Expect<mqtt::Puback>();
  }
  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) {
    seen.insert(a->Expect<mqtt::Publish>().payload);
    seen.insert(b->Expect<mqtt::Publish>().payload);
  }
  EXPECT_EQ(seen.size(), 4u);
  a->Send(mqtt::Pingreq{});
  a->Expect<mqtt::Pingresp>();
  b->Send(mqtt::Pingreq{});
  b->Expect<mqtt::Pingresp>();
}

TEST_P(MqttServerTest, UnansweredSharedMessageGoesToAnotherMemberWhenOneLeaves) {
  auto a = NewClient(version());
  a->Connect("a");
  auto b = NewClient(version());
  b->Connect("b");
  a->Subscribe("$share/g/u", QoS::kAtLeastOnce);
  b->Subscribe("$share/g/u", QoS::kAtLeastOnce);
  auto pub = NewClient(version());
  pub->Connect("pub");
  pub->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "u", .packet_id = 1, .payload = "m0"});
  pub->Expect<mqtt::Puback>();
  pub->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "u", .packet_id = 2, .payload = "m1"});
  pub->Expect<mqtt::Puback>();
  // One message each; `a` leaves without acknowledging its own.
  auto got_a = a->Expect<mqtt::Publish>();
  a.reset();
  auto first_b = b->Expect<mqtt::Publish>();
  b->Send(mqtt::Puback{.packet_id = first_b.packet_id});
  auto second_b = b->Expect<mqtt::Publish>();
  EXPECT_EQ(second_b.payload, got_a.payload);
  EXPECT_NE(first_b.payload, second_b.payload);
}

TEST_P(MqttServerTest, TopicAliasSetByOnePublishIsUsedByTheNext) {
  if (version() != Version::kV5) GTEST_SKIP() << "topic aliases are MQTT 5";
  auto sub = NewClient(version());
  mqtt::Properties sp;
  sp.topic_alias_maximum = 4;  // the subscriber accepts aliases too
  sub->Connect("sub", sp);
  sub->Subscribe("al/#", QoS::kAtMostOnce);
  auto pub = NewClient(version());
  auto ack = pub->Connect("pub");
  ASSERT_TRUE(ack.properties.topic_alias_maximum.has_value());
  mqtt::Publish first{.qos = QoS::kAtLeastOnce, .topic = "al/x", .packet_id = 1, .payload = "1"};
  first.properties.topic_alias = 1;
  pub->Send(first);
  pub->Expect<mqtt::Puback>();
  mqtt::Publish second{.qos = QoS::kAtLeastOnce, .topic = "", .packet_id = 2, .payload = "2"};
  second.properties.topic_alias = 1;
  pub->Send(second);
  pub->Expect<mqtt::Puback>();
  auto m1 = sub->Expect<mqtt::Publish>();
  auto m2 = sub->Expect<mqtt::Publish>();
  EXPECT_EQ(m1.topic, "al/x");
  EXPECT_EQ(m1.properties.topic_alias, 1);
  EXPECT_EQ(m2.topic, "");  // the server used the alias it set
  EXPECT_EQ(m2.properties.topic_alias, 1);
  EXPECT_EQ(m2.payload, "2");
  // An alias never set is a Protocol Error.
  mqtt::Publish bad{.qos = QoS::kAtMostOnce, .topic = "", .payload = "3"};
  bad.properties.topic_alias = 2;
  pub->Send(bad);
  EXPECT_EQ(pub->Expect<mqtt::Disconnect>().reason_code, ReasonCode::kProtocolError);
}

TEST_P(MqttServerTest, NoLocalSubscriptionDoesNotGetItsOwnMessages) {
  if (version() != Version::kV5) GTEST_SKIP() << "No Local is MQTT 5";
  auto c = NewClient(version());
  c->Connect("self");
  c->Send(mqtt::Subscribe{.packet_id = 1,
                          .subscriptions = {{.topic_filter = "nl",
                                             .max_qos = QoS::kAtMostOnce,
                                             .no_local = true}}});
  c->Expect<mqtt::Suback>();
  mqtt::Subscribe with_id{.packet_id = 2,
                          .subscriptions = {{.topic_filter = "other/+",
                                             .max_qos = QoS::kAtMostOnce}}};
  with_id.properties.subscription_identifiers = {42};
  c->Send(with_id);
  c->Expect<mqtt::Suback>();
  c->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "nl", .packet_id = 3, .payload = "x"});
  c->Expect<mqtt::Puback>();
  auto other = NewClient(version());
  other->Connect("other");
  other->Send(
      mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "other/1", .packet_id = 1, .payload = "y"});
  other->Expect<mqtt::Puback>();
  auto got = c->Expect<mqtt::Publish>();  // not its own "nl" message
  EXPECT_EQ(got.topic, "other/1");
  EXPECT_EQ(got.properties.subscription_identifiers, std::vector<uint32_t>{42});
}

TEST_P(MqttServerTest, DeniedPublishAndSubscribeGetNotAuthorized) {
  server_->Stop();
  MqttServerOptions o;
  o.listen = "127.0.0.1:0";
  o.sys_interval = std::chrono::milliseconds(0);
  o.may_publish = [](std::string_view, const std::optional<std::string>&, std::string_view t) {
    return t.substr(0, 7) != "secret/";
  };
  o.may_subscribe = o.may_publish;
  server_ = std::make_unique<MqttServer>(o, &core_);
  core_.server_ = server_.get();
  ASSERT_TRUE(server_->Start(loops_).ok());
  auto c = NewClient(version());
  c->Connect("c");
  c->Send(mqtt::Subscribe{.packet_id = 1,
                          .subscriptions = {{.topic_filter = "secret/#"},
                                            {.topic_filter = "open/#"}}});
  auto sa = c->Expect<mqtt::Suback>();
  ASSERT_EQ(sa.reason_codes.size(), 2u);
  EXPECT_EQ(sa.reason_codes[0], version() == Version::kV5 ? ReasonCode::kNotAuthorized
                                                           : ReasonCode::kUnspecifiedError);
  EXPECT_EQ(sa.reason_codes[1], ReasonCode::kSuccess);
  c->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "secret/x", .packet_id = 5,
                        .payload = "no"});
  auto ack = c->Expect<mqtt::Puback>();
  EXPECT_EQ(ack.reason_code,
            version() == Version::kV5 ? ReasonCode::kNotAuthorized : ReasonCode::kSuccess);
  EXPECT_EQ(core_.PublishedCount(), 0u);
}

TEST_P(MqttServerTest, SecondConnectionWithSameClientIdTakesOver) {
  auto first = NewClient(version());
  first->Connect("same");
  auto second = NewClient(version());
  EXPECT_EQ(second->Connect("same").reason_code, ReasonCode::kSuccess);
  if (version() == Version::kV5) {
    EXPECT_EQ(first->Expect<mqtt::Disconnect>().reason_code, ReasonCode::kSessionTakenOver);
  }
  EXPECT_TRUE(first->Closed());
  second->Send(mqtt::Pingreq{});
  second->Expect<mqtt::Pingresp>();
}

TEST_P(MqttServerTest, SecondConnectIsAProtocolError) {
  auto c = NewClient(version());
  c->Connect("c");
  c->Send(mqtt::Connect{.client_id = "c"});
  if (version() == Version::kV5) {
    EXPECT_EQ(c->Expect<mqtt::Disconnect>().reason_code, ReasonCode::kProtocolError);
  }
  EXPECT_TRUE(c->Closed());
}

TEST_P(MqttServerTest, MalformedPacketEndsTheConnection) {
  auto c = NewClient(version());
  c->Connect("c");
  c->SendRaw(std::string("\x00\x02\xff\xff", 4));  // reserved packet type 0
  if (version() == Version::kV5) {
    EXPECT_EQ(c->Expect<mqtt::Disconnect>().reason_code, ReasonCode::kMalformedPacket);
  }
  EXPECT_TRUE(c->Closed());
  // The server still serves others.
  auto d = NewClient(version());
  EXPECT_EQ(d->Connect("d").reason_code, ReasonCode::kSuccess);
}

TEST_P(MqttServerTest, FailedCorePublishIsNotAcknowledgedAsSuccess) {
  core_.set_fail(true);
  auto c = NewClient(version());
  c->Connect("c");
  c->Send(mqtt::Publish{.qos = QoS::kAtLeastOnce, .topic = "t", .packet_id = 9, .payload = "x"});
  if (version() == Version::kV5) {
    auto ack = c->Expect<mqtt::Puback>();
    EXPECT_EQ(ack.packet_id, 9);
    EXPECT_EQ(ack.reason_code, ReasonCode::kUnspecifiedError);
  } else {
    EXPECT_TRUE(c->Closed());
  }
}

TEST_P(MqttServerTest, SilentClientIsDisconnectedAfterOneAndAHalfKeepAlives) {
  auto c = NewClient(version());
  c->Send(mqtt::Connect{.keep_alive = 1, .client_id = "quiet"});
  c->Expect<mqtt::Connack>();
  auto start = std::chrono::steady_clock::now();
  if (version() == Version::kV5) {
    EXPECT_EQ(c->Expect<mqtt::Disconnect>().reason_code, ReasonCode::kKeepAliveTimeout);
  }
  EXPECT_TRUE(c->Closed());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1400));
}

TEST(MqttServerV5Test, EmptyClientIdIsAssigned) {
  net::LoopGroup loops(1, "mqtt-test");
  ASSERT_TRUE(loops.Start().ok());
  FakeCore core;
  MqttServerOptions options;
  options.listen = "127.0.0.1:0";
  MqttServer server(options, &core);
  ASSERT_TRUE(server.Start(loops).ok());
  {
    Client c(server.address(), Version::kV5);
    auto ack = c.Connect("");
    EXPECT_EQ(ack.reason_code, ReasonCode::kSuccess);
    EXPECT_FALSE(ack.session_present);
    ASSERT_TRUE(ack.properties.assigned_client_identifier.has_value());
    EXPECT_FALSE(ack.properties.assigned_client_identifier->empty());
  }
  {
    Client c(server.address(), Version::kV311);
    EXPECT_EQ(c.Connect("").reason_code, ReasonCode::kSuccess);  // Clean Session 1
  }
  server.Stop();
  loops.Stop();
}

INSTANTIATE_TEST_SUITE_P(Versions, MqttServerTest, ::testing::Values(Version::kV311, Version::kV5),
                         [](const auto& info) {
                           return info.param == Version::kV5 ? "V5" : "V311";
                         });

}  // namespace
}  // namespace herald::edge
