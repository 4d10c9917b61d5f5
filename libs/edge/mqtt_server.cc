#include "libs/edge/mqtt_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "libs/common/logging.h"
#include "libs/common/strings.h"
#include "libs/net/connection.h"
#include "libs/protocol/mqtt/codec.h"
#include "libs/protocol/mqtt/topic.h"
#include "libs/protocol/mqtt/topic_trie.h"

namespace herald::edge {

namespace {

using mqtt::QoS;
using mqtt::ReasonCode;
using mqtt::Version;

class MqttSession;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomClientId() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[48];
  std::snprintf(buf, sizeof buf, "herald-%016llx-%llu", static_cast<unsigned long long>(r),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}

// The sessions of one loop. Loop thread only, except `loop`.
struct LoopState {
  net::EventLoop* loop = nullptr;
  std::unordered_map<uint64_t, MqttSession*> sessions;
};

// A subscription as the shared index stores it.
struct SubRef {
  LoopState* loop_state;
  uint64_t session_id;
  uint8_t qos;
  bool operator==(const SubRef&) const = default;
};

struct Delivery {
  uint64_t session_id;
  QoS qos;
  std::shared_ptr<const v1::Message> message;
};

}  // namespace

struct MqttServer::Hub {
  MqttServerOptions options;
  std::atomic<bool> stopped{false};
  std::atomic<uint64_t> next_session_id{1};
  std::atomic<int64_t> live_sessions{0};
  // Fixed once the server started.
  std::map<net::EventLoop*, std::shared_ptr<LoopState>> loops;

  std::shared_mutex core_mu;
  CoreApi* core ABSL_GUARDED_BY(core_mu) = nullptr;

  std::mutex mu;
  mqtt::TopicTrie<SubRef> trie ABSL_GUARDED_BY(mu);
  struct Owner {
    LoopState* loop_state;
    uint64_t session_id;
  };
  std::map<std::string, Owner> clients ABSL_GUARDED_BY(mu);

  std::shared_ptr<LoopState> StateOf(LoopState* raw) {
    for (auto& [loop, st] : loops) {
      if (st.get() == raw) return st;
    }
    return nullptr;
  }

  void Publish(std::vector<v1::Message> m, std::function<void(const absl::Status&)> done) {
    std::shared_lock<std::shared_mutex> l(core_mu);
    if (core == nullptr) {
      if (done) done(absl::UnavailableError("server stopping"));
      return;
    }
    core->Publish(std::move(m), std::move(done));
  }
  void AddFilter(const std::string& f, std::function<void()> applied) {
    std::shared_lock<std::shared_mutex> l(core_mu);
    if (core != nullptr) core->AddFilter(f, std::move(applied));
  }
  void RemoveFilter(const std::string& f) {
    std::shared_lock<std::shared_mutex> l(core_mu);
    if (core != nullptr) core->RemoveFilter(f);
  }
};

namespace {

using Hub = MqttServer::Hub;

// One MQTT client connection. Lives on its connection's loop; see mqtt_server.h.
class MqttSession final : public net::ConnectionHandler {
 public:
  MqttSession(std::shared_ptr<Hub> hub, std::shared_ptr<LoopState> loop_state,
              net::Connection& conn)
      : hub_(std::move(hub)),
        loop_state_(std::move(loop_state)),
        conn_(&conn),
        id_(hub_->next_session_id.fetch_add(1)),
        decoder_(mqtt::DecoderOptions{.role = mqtt::Role::kServer,
                                      .maximum_packet_size = hub_->options.maximum_packet_size}) {
    loop_state_->sessions[id_] = this;
    hub_->live_sessions.fetch_add(1);
    connect_timer_ = std::make_unique<net::Timer>(conn.loop(), [this] {
      if (!connected_) {
        spdlog::debug("mqtt {}: no CONNECT in time", conn_->peer().ToString());
        conn_->Close();
      }
    });
    connect_timer_->Start(hub_->options.connect_timeout);
  }

  ~MqttSession() override { Cleanup(); }

  void OnData(net::Connection&, std::string_view data) override {
    if (closing_) return;
    if (keep_alive_timer_) keep_alive_timer_->Start(keep_alive_timeout_);
    packets_.clear();
    std::optional<mqtt::Error> error = decoder_.Feed(data, &packets_);
    for (auto& p : packets_) {
      if (closing_) return;
      Handle(p);
    }
    if (error && !closing_) OnDecodeError(*error);
  }

  void OnClose(net::Connection&, const absl::Status& reason) override {
    if (!reason.ok()) {
      spdlog::debug("mqtt {} ({}): closed: {}", conn_->peer().ToString(), client_id_, reason);
    }
    Cleanup();
  }

  // A message for this session from the fan-out. `qos` is already min(subscription, message).
  void Deliver(QoS qos, std::shared_ptr<const v1::Message> message) {
    if (!connected_ || closing_) return;
    if (!queue_.empty() || (qos != QoS::kAtMostOnce && inflight_.size() >= window_)) {
      if (queue_.size() >= hub_->options.max_queued_messages) {
        spdlog::info("mqtt {} ({}): slow client, {} messages queued; disconnecting",
                     conn_->peer().ToString(), client_id_, queue_.size());
        CloseWith(ReasonCode::kQuotaExceeded);
        return;
      }
      queue_.emplace_back(qos, std::move(message));
      return;
    }
    SendMessage(qos, *message);
  }

  // Another connection took this client id over (§3.1.4-3).
  void TakenOver() {
    if (closing_) return;
    registered_ = false;  // the registry entry is the new owner's now
    CloseWith(ReasonCode::kSessionTakenOver);
  }

  void ServerStopping() { CloseWith(ReasonCode::kServerShuttingDown); }

  // The core answered an inbound QoS 1 publish (index into inbound_acks_).
  void InboundPublishDone(uint64_t seq, const absl::Status& status) {
    if (closing_) return;
    if (seq < inbound_base_ || seq - inbound_base_ >= inbound_acks_.size()) return;
    InboundAck& a = inbound_acks_[seq - inbound_base_];
    a.done = true;
    a.status = status;
    // §4.6: PUBACKs go out in the order the PUBLISHes came.
    while (!inbound_acks_.empty() && inbound_acks_.front().done) {
      InboundAck front = std::move(inbound_acks_.front());
      inbound_acks_.pop_front();
      ++inbound_base_;
      if (!front.status.ok()) {
        spdlog::warn("mqtt {} ({}): publish failed: {}", conn_->peer().ToString(), client_id_,
                     front.status);
        if (version_ == Version::kV311) {
          // 3.1.1 has no negative PUBACK: close, the client resends on its next connection.
          conn_->Close();
          closing_ = true;
          return;
        }
        Send(mqtt::Puback{.packet_id = front.packet_id,
                          .reason_code = ReasonCode::kUnspecifiedError});
        continue;
      }
      Send(mqtt::Puback{.packet_id = front.packet_id});
    }
  }

  // Sends the SUBACK prepared for a SUBSCRIBE once its filters are applied.
  void SendPrepared(mqtt::Suback suback) {
    if (closing_) return;
    Send(std::move(suback));
  }

 private:
  struct InboundAck {
    uint16_t packet_id;
    bool done = false;
    absl::Status status{};
  };

  bool Send(const mqtt::Packet& packet) {
    std::string out;
    absl::Status s = mqtt::Encode(packet, version_, &out);
    if (!s.ok()) {
      spdlog::error("mqtt {}: cannot encode {}: {}", conn_->peer().ToString(),
                    mqtt::PacketTypeName(mqtt::TypeOf(packet)), s);
      return false;
    }
    return conn_->Send(std::move(out));
  }

  // 5.0: DISCONNECT with `code`, then close; 3.1.1: close.
  void CloseWith(ReasonCode code) {
    if (closing_) return;
    closing_ = true;
    if (connected_ && version_ == Version::kV5 &&
        mqtt::ReasonCodeAllowedIn(code, mqtt::PacketType::kDisconnect)) {
      Send(mqtt::Disconnect{.reason_code = code});
    }
    conn_->Close();
  }

  void OnDecodeError(const mqtt::Error& e) {
    spdlog::debug("mqtt {}: {} ({})", conn_->peer().ToString(), e.message,
                  mqtt::ReasonCodeName(e.reason_code));
    if (!connected_ && e.packet_type == mqtt::PacketType::kConnect) {
      // §3.2.2.2 / 3.1.1 §3.2.2.3: answer a bad CONNECT with a CONNACK when one can say why.
      std::optional<Version> v = decoder_.version();
      if (!v) {
        version_ = Version::kV311;
        Send(mqtt::Connack{.reason_code = ReasonCode::kUnsupportedProtocolVersion});
      } else {
        version_ = *v;
        if (version_ == Version::kV5 || mqtt::ConnackReturnCodeV311(e.reason_code).has_value()) {
          Send(mqtt::Connack{.reason_code = e.reason_code});
        }
      }
      closing_ = true;
      conn_->Close();
      return;
    }
    CloseWith(e.reason_code);
  }

  void Handle(mqtt::Packet& packet) {
    if (!connected_ && !std::holds_alternative<mqtt::Connect>(packet)) {
      // The decoder enforces CONNECT first; defensive.
      closing_ = true;
      conn_->Close();
      return;
    }
    std::visit([this](auto& p) { On(p); }, packet);
  }

  void On(mqtt::Connect& c) {
    if (connected_) {  // §3.1.0-2: a second CONNECT is a Protocol Error
      CloseWith(ReasonCode::kProtocolError);
      return;
    }
    version_ = decoder_.version().value_or(Version::kV311);
    mqtt::Connack ack;
    if (version_ == Version::kV5 && c.will && c.will->qos == QoS::kExactlyOnce) {
      // §3.2.2.3.4: a Will QoS above Maximum QoS is refused with 0x9B.
      Send(mqtt::Connack{.reason_code = ReasonCode::kQoSNotSupported});
      closing_ = true;
      conn_->Close();
      return;
    }
    if (version_ == Version::kV5 && c.properties.authentication_method) {
      Send(mqtt::Connack{.reason_code = ReasonCode::kBadAuthenticationMethod});
      closing_ = true;
      conn_->Close();
      return;
    }
    client_id_ = c.client_id;
    if (client_id_.empty()) {
      // 5.0 §3.1.3.1: assign one and say so; 3.1.1: the decoder refused empty + Clean Session 0.
      client_id_ = RandomClientId();
      if (version_ == Version::kV5) ack.properties.assigned_client_identifier = client_id_;
    }
    if (version_ == Version::kV5) {
      if (c.properties.receive_maximum) window_ = *c.properties.receive_maximum;
      if (c.properties.maximum_packet_size) client_max_packet_ = *c.properties.maximum_packet_size;
      ack.properties.maximum_qos = 1;
      ack.properties.retain_available = false;
      ack.properties.shared_subscription_available = false;
      ack.properties.subscription_identifiers_available = false;
      ack.properties.maximum_packet_size = hub_->options.maximum_packet_size;
      // No persistent sessions yet: the session ends with the connection (§3.2.2.3.2).
      if (c.properties.session_expiry_interval.value_or(0) != 0) {
        ack.properties.session_expiry_interval = 0;
      }
    } else {
      window_ = hub_->options.default_inflight;
    }
    if (window_ == 0) window_ = hub_->options.default_inflight;
    connected_ = true;
    connect_timer_.reset();
    if (c.keep_alive > 0) {
      keep_alive_timeout_ = std::chrono::milliseconds(c.keep_alive * 1500);
      keep_alive_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] {
        spdlog::debug("mqtt {} ({}): keep-alive timeout", conn_->peer().ToString(), client_id_);
        CloseWith(ReasonCode::kKeepAliveTimeout);
      });
      keep_alive_timer_->Start(keep_alive_timeout_);
    }
    // Take over an existing connection with the same client id.
    std::optional<Hub::Owner> previous;
    {
      std::lock_guard<std::mutex> l(hub_->mu);
      auto [it, inserted] = hub_->clients.try_emplace(client_id_, Hub::Owner{});
      if (!inserted) previous = it->second;
      it->second = Hub::Owner{loop_state_.get(), id_};
    }
    registered_ = true;
    if (previous) {
      std::shared_ptr<LoopState> st = hub_->StateOf(previous->loop_state);
      uint64_t sid = previous->session_id;
      if (st) {
        st->loop->Post([st, sid] {
          auto it = st->sessions.find(sid);
          if (it != st->sessions.end()) it->second->TakenOver();
        });
      }
    }
    Send(ack);
  }

  void On(mqtt::Publish& p) {
    if (p.qos == QoS::kExactlyOnce) {
      // Maximum QoS is 1 (5.0: announced in CONNACK, so this is 0x9B); 3.1.1 has no way to
      // refuse or downgrade an inbound QoS 2 message, so the connection is closed.
      CloseWith(ReasonCode::kQoSNotSupported);
      return;
    }
    if (version_ == Version::kV5) {
      if (p.properties.topic_alias) {  // Topic Alias Maximum is 0 (§3.3.2.3.4)
        CloseWith(ReasonCode::kTopicAliasInvalid);
        return;
      }
      if (p.retain) {  // Retain Available is 0 (§3.3.1.3)
        CloseWith(ReasonCode::kRetainNotSupported);
        return;
      }
    }
    if (p.topic.empty()) {
      CloseWith(ReasonCode::kProtocolError);
      return;
    }
    v1::Message m;
    m.set_topic(std::move(p.topic));
    m.set_payload(std::move(p.payload));
    m.set_qos(static_cast<v1::QoS>(p.qos));
    const mqtt::Properties& pr = p.properties;
    if (pr.message_expiry_interval) m.set_expiry_interval_s(*pr.message_expiry_interval);
    if (pr.content_type) m.set_content_type(*pr.content_type);
    if (pr.payload_format_indicator.value_or(0) == 1) m.set_payload_format(v1::PAYLOAD_FORMAT_UTF8);
    if (pr.response_topic) m.set_response_topic(*pr.response_topic);
    if (pr.correlation_data) m.set_correlation_data(*pr.correlation_data);
    for (const auto& up : pr.user_properties) {
      auto* u = m.add_user_properties();
      u->set_key(up.name);
      u->set_value(up.value);
    }
    std::vector<v1::Message> batch;
    batch.push_back(std::move(m));
    if (p.qos == QoS::kAtMostOnce) {
      hub_->Publish(std::move(batch), [](const absl::Status& s) {
        if (!s.ok()) spdlog::debug("mqtt: QoS 0 publish failed: {}", s);
      });
      return;
    }
    uint64_t seq = inbound_base_ + inbound_acks_.size();
    inbound_acks_.push_back(InboundAck{.packet_id = p.packet_id});
    std::shared_ptr<LoopState> st = loop_state_;
    uint64_t sid = id_;
    hub_->Publish(std::move(batch), [st, sid, seq](const absl::Status& s) {
      st->loop->Post([st, sid, seq, s] {
        auto it = st->sessions.find(sid);
        if (it != st->sessions.end()) it->second->InboundPublishDone(seq, s);
      });
    });
  }

  void On(mqtt::Puback& a) {
    if (inflight_.erase(a.packet_id) == 0) return;  // unknown id: nothing to release
    DrainQueue();
  }

  void On(mqtt::Subscribe& s) {
    if (version_ == Version::kV5 && !s.properties.subscription_identifiers.empty()) {
      CloseWith(ReasonCode::kSubscriptionIdentifiersNotSupported);
      return;
    }
    mqtt::Suback ack{.packet_id = s.packet_id};
    std::vector<std::string> added;
    for (const auto& sub : s.subscriptions) {
      if (mqtt::IsSharedSubscription(sub.topic_filter)) {
        ack.reason_codes.push_back(ReasonCode::kSharedSubscriptionsNotSupported);
        continue;
      }
      if (mqtt::ValidateTopicFilter(sub.topic_filter).has_value()) {
        ack.reason_codes.push_back(ReasonCode::kTopicFilterInvalid);
        continue;
      }
      uint8_t granted = std::min<uint8_t>(static_cast<uint8_t>(sub.max_qos), 1);
      ack.reason_codes.push_back(granted == 1 ? ReasonCode::kGrantedQoS1 : ReasonCode::kSuccess);
      auto it = subscriptions_.find(sub.topic_filter);
      std::lock_guard<std::mutex> l(hub_->mu);
      if (it != subscriptions_.end()) {
        // §3.8.4: a subscription to an existing filter replaces it.
        hub_->trie.Remove(sub.topic_filter, SubRef{loop_state_.get(), id_, it->second});
        it->second = granted;
      } else {
        subscriptions_[sub.topic_filter] = granted;
        added.push_back(sub.topic_filter);
      }
      hub_->trie.Insert(sub.topic_filter, SubRef{loop_state_.get(), id_, granted});
    }
    if (added.empty()) {
      Send(ack);
      return;
    }
    // SUBACK once the core delivers for every new filter, so a client that publishes after
    // its SUBACK gets its own messages.
    struct Waiting {
      std::atomic<size_t> remaining;
      mqtt::Suback ack;
    };
    auto w = std::make_shared<Waiting>();
    w->remaining = added.size();
    w->ack = std::move(ack);
    std::shared_ptr<LoopState> st = loop_state_;
    uint64_t sid = id_;
    for (const auto& f : added) {
      hub_->AddFilter(f, [w, st, sid] {
        if (w->remaining.fetch_sub(1) != 1) return;
        st->loop->Post([w, st, sid] {
          auto it = st->sessions.find(sid);
          if (it != st->sessions.end()) it->second->SendPrepared(std::move(w->ack));
        });
      });
    }
  }

  void On(mqtt::Unsubscribe& u) {
    mqtt::Unsuback ack{.packet_id = u.packet_id};
    for (const auto& f : u.topic_filters) {
      auto it = subscriptions_.find(f);
      if (it == subscriptions_.end()) {
        ack.reason_codes.push_back(ReasonCode::kNoSubscriptionExisted);
        continue;
      }
      {
        std::lock_guard<std::mutex> l(hub_->mu);
        hub_->trie.Remove(f, SubRef{loop_state_.get(), id_, it->second});
      }
      subscriptions_.erase(it);
      hub_->RemoveFilter(f);
      ack.reason_codes.push_back(ReasonCode::kSuccess);
    }
    Send(ack);
  }

  void On(mqtt::Pingreq&) { Send(mqtt::Pingresp{}); }

  void On(mqtt::Disconnect&) {
    // Normal disconnection (a will would be discarded; wills are not supported yet).
    closing_ = true;
    conn_->Close();
  }

  void On(mqtt::Auth&) { CloseWith(ReasonCode::kProtocolError); }

  // PUBREC/PUBREL/PUBCOMP: no QoS 2 exchange exists on this connection in either direction.
  template <typename T>
  void On(T&) {
    CloseWith(ReasonCode::kProtocolError);
  }

  uint16_t NextPacketId() {
    for (;;) {
      uint16_t id = next_packet_id_++;
      if (next_packet_id_ == 0) next_packet_id_ = 1;
      if (!inflight_.contains(id)) return id;
    }
  }

  // Sends one message now (the window has room when qos is 1).
  void SendMessage(QoS qos, const v1::Message& m) {
    mqtt::Publish p;
    p.qos = qos;
    p.topic = m.topic();
    p.payload = m.payload();
    if (version_ == Version::kV5) {
      mqtt::Properties& pr = p.properties;
      if (m.has_expiry_interval_s()) {
        // §3.3.2.3.3: the interval left.
        int64_t elapsed_s = (NowUnixMs() - m.publish_time_unix_ms()) / 1000;
        int64_t left =
            static_cast<int64_t>(m.expiry_interval_s()) - std::max<int64_t>(elapsed_s, 0);
        if (m.expiry_interval_s() > 0 && left <= 0) return;  // expired
        pr.message_expiry_interval = static_cast<uint32_t>(std::max<int64_t>(left, 0));
      }
      if (!m.content_type().empty()) pr.content_type = m.content_type();
      if (m.payload_format() == v1::PAYLOAD_FORMAT_UTF8) pr.payload_format_indicator = 1;
      if (!m.response_topic().empty()) pr.response_topic = m.response_topic();
      if (!m.correlation_data().empty()) pr.correlation_data = m.correlation_data();
      for (const auto& u : m.user_properties()) {
        pr.user_properties.push_back({u.key(), u.value()});
      }
    }
    if (qos != QoS::kAtMostOnce) p.packet_id = 1;  // for the size check
    if (client_max_packet_ != 0 && mqtt::EncodedSize(p, version_) > client_max_packet_) {
      return;  // §3.1.2.11.4: discarded as if sent
    }
    if (qos != QoS::kAtMostOnce) {
      p.packet_id = NextPacketId();
      inflight_.insert(p.packet_id);
    }
    Send(p);
  }

  void DrainQueue() {
    while (!queue_.empty() && !closing_) {
      auto& [qos, msg] = queue_.front();
      if (qos != QoS::kAtMostOnce && inflight_.size() >= window_) return;
      SendMessage(qos, *msg);
      queue_.pop_front();
    }
  }

  void Cleanup() {
    if (cleaned_up_) return;
    cleaned_up_ = true;
    closing_ = true;
    keep_alive_timer_.reset();
    connect_timer_.reset();
    loop_state_->sessions.erase(id_);
    {
      std::lock_guard<std::mutex> l(hub_->mu);
      for (const auto& [f, qos] : subscriptions_) {
        hub_->trie.Remove(f, SubRef{loop_state_.get(), id_, qos});
      }
      if (registered_) {
        auto it = hub_->clients.find(client_id_);
        if (it != hub_->clients.end() && it->second.session_id == id_) hub_->clients.erase(it);
      }
    }
    for (const auto& [f, qos] : subscriptions_) hub_->RemoveFilter(f);
    subscriptions_.clear();
    hub_->live_sessions.fetch_sub(1);
  }

  std::shared_ptr<Hub> hub_;
  std::shared_ptr<LoopState> loop_state_;
  net::Connection* conn_;
  const uint64_t id_;
  mqtt::Decoder decoder_;
  std::vector<mqtt::Packet> packets_;
  Version version_ = Version::kV311;
  bool connected_ = false;
  bool closing_ = false;
  bool cleaned_up_ = false;
  bool registered_ = false;
  std::string client_id_;
  std::unique_ptr<net::Timer> connect_timer_;
  std::unique_ptr<net::Timer> keep_alive_timer_;
  std::chrono::milliseconds keep_alive_timeout_{0};
  std::map<std::string, uint8_t> subscriptions_;  // filter -> granted QoS
  // Outbound.
  size_t window_ = 64;
  uint32_t client_max_packet_ = 0;  // 0: no limit
  uint16_t next_packet_id_ = 1;
  std::set<uint16_t> inflight_;
  std::deque<std::pair<QoS, std::shared_ptr<const v1::Message>>> queue_;
  // Inbound QoS 1 publishes waiting for the core, in arrival order.
  std::deque<InboundAck> inbound_acks_;
  uint64_t inbound_base_ = 0;
};

}  // namespace

MqttServer::MqttServer(MqttServerOptions options, CoreApi* core)
    : options_(std::move(options)), hub_(std::make_shared<Hub>()) {
  hub_->options = options_;
  std::unique_lock<std::shared_mutex> l(hub_->core_mu);
  hub_->core = core;
}

MqttServer::~MqttServer() { Stop(); }

absl::Status MqttServer::Start(net::LoopGroup& loops) {
  auto address = net::SocketAddress::Parse(options_.listen);
  if (!address.ok()) return address.status();
  loops_ = &loops;
  for (size_t i = 0; i < loops.size(); ++i) {
    auto st = std::make_shared<LoopState>();
    st->loop = &loops.loop(i);
    hub_->loops[&loops.loop(i)] = st;
  }
  std::shared_ptr<Hub> hub = hub_;
  net::ListenerOptions lo;
  lo.max_connections = options_.max_connections;
  auto listener = net::ListenerGroup::Listen(
      loops, *address,
      [hub](net::Connection& conn) -> std::unique_ptr<net::ConnectionHandler> {
        if (hub->stopped.load()) return nullptr;
        auto it = hub->loops.find(&conn.loop());
        if (it == hub->loops.end()) return nullptr;
        return std::make_unique<MqttSession>(hub, it->second, conn);
      },
      lo);
  if (!listener.ok()) return listener.status();
  listener_ = std::move(*listener);
  spdlog::info("mqtt listening on {}", listener_->address().ToString());
  return absl::OkStatus();
}

void MqttServer::Stop() {
  if (hub_->stopped.exchange(true)) return;
  if (listener_) listener_->Close();
  for (auto& [loop, st] : hub_->loops) {
    loop->Post([st] {
      std::vector<MqttSession*> all;
      for (auto& [id, s] : st->sessions) all.push_back(s);
      for (MqttSession* s : all) s->ServerStopping();
    });
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (hub_->live_sessions.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Sessions still open from here on no longer reach the core.
  std::unique_lock<std::shared_mutex> l(hub_->core_mu);
  hub_->core = nullptr;
}

void MqttServer::Deliver(const std::vector<const v1::Message*>& messages) {
  std::map<LoopState*, std::vector<Delivery>> by_loop;
  {
    std::lock_guard<std::mutex> l(hub_->mu);
    std::map<std::pair<LoopState*, uint64_t>, uint8_t> targets;
    for (const v1::Message* m : messages) {
      targets.clear();
      hub_->trie.Match(m->topic(), [&](const SubRef& r) {
        uint8_t& q = targets[{r.loop_state, r.session_id}];
        q = std::max(q, r.qos);
      });
      if (targets.empty()) continue;
      auto shared = std::make_shared<const v1::Message>(*m);
      uint8_t mq = static_cast<uint8_t>(m->qos());
      for (const auto& [key, q] : targets) {
        by_loop[key.first].push_back(
            Delivery{key.second, static_cast<QoS>(std::min(q, mq)), shared});
      }
    }
  }
  for (auto& [raw, deliveries] : by_loop) {
    std::shared_ptr<LoopState> st = hub_->StateOf(raw);
    if (!st) continue;
    st->loop->Post([st, d = std::move(deliveries)]() mutable {
      for (auto& one : d) {
        auto it = st->sessions.find(one.session_id);
        if (it != st->sessions.end()) it->second->Deliver(one.qos, std::move(one.message));
      }
    });
  }
}

const net::SocketAddress& MqttServer::address() const { return listener_->address(); }

std::shared_ptr<const net::ConnectionStats> MqttServer::stats() const {
  return listener_ ? listener_->shared_stats() : nullptr;
}

}  // namespace herald::edge
