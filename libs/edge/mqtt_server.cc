#include "libs/edge/mqtt_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "libs/common/logging.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/common/thread.h"
#include "libs/common/version.h"
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

// A subscription as the shared index stores it. Equal when it names the same session (a
// session has one subscription per filter).
struct SubRef {
  LoopState* loop_state = nullptr;
  uint64_t session_id = 0;
  const std::string* client_id = nullptr;  // the session's; valid while the entry is indexed
  uint8_t qos = 0;
  bool no_local = false;
  bool retain_as_published = false;
  uint32_t subscription_id = 0;
  bool operator==(const SubRef& o) const {
    return loop_state == o.loop_state && session_id == o.session_id;
  }
};

// The members of one shared subscription `$share/{group}/{filter}` on this edge; each message
// goes to one of them, in turn (MQTT 5.0 §4.8.2).
struct SharedGroup {
  std::string key;  // "$share/{group}/{filter}"
  std::vector<SubRef> members;
  size_t next = 0;
};

// A message on its way to one session.
struct OutMessage {
  QoS qos = QoS::kAtMostOnce;
  bool retain = false;
  std::vector<uint32_t> subscription_ids;
  std::shared_ptr<const v1::Message> message;
  // Non-empty: delivered through this shared subscription (given to another member if this
  // session goes away without acknowledging it).
  std::string shared_key;
  // A log message counted in the session's cursor (persistent sessions).
  bool from_log = false;
  // A retained message sent because of a new subscription, with the position it was published
  // at (in this epoch, 0 if unknown): kept in a persistent session's in-flight state like a log
  // message, but not counted in the cursor.
  bool as_retained = false;
  uint64_t retained_epoch = 0;
};

struct Delivery {
  uint64_t session_id;
  OutMessage out;
};

// A deque allocated on first use: std::deque allocates even when empty, and an idle connection
// should cost little memory.
template <typename T>
class LazyDeque {
 public:
  bool empty() const { return !d_ || d_->empty(); }
  size_t size() const { return d_ ? d_->size() : 0; }
  T& front() { return d_->front(); }
  T& operator[](size_t i) { return (*d_)[i]; }
  void pop_front() { d_->pop_front(); }
  void push_back(T v) {
    if (!d_) d_ = std::make_unique<std::deque<T>>();
    d_->push_back(std::move(v));
  }
  void clear() { d_.reset(); }
  template <typename F>
  void ForEach(F&& f) {
    if (d_) {
      for (auto& v : *d_) f(v);
    }
  }

 private:
  std::unique_ptr<std::deque<T>> d_;
};

void RunOnSession(const std::shared_ptr<LoopState>& st, uint64_t sid,
                  absl::AnyInvocable<void(MqttSession&)> fn);
void PostDelivery(const std::shared_ptr<LoopState>& st, Delivery d);

}  // namespace

struct MqttServer::Hub {
  MqttServerOptions options;
  std::atomic<bool> stopped{false};
  std::atomic<uint64_t> next_session_id{1};
  std::atomic<int64_t> live_sessions{0};
  std::atomic<int64_t> connected{0};
  // Final session writes (update, then close) still on their way to the core.
  std::atomic<int64_t> pending_closes{0};
  // $SYS counters.
  std::atomic<uint64_t> messages_received{0};
  std::atomic<uint64_t> messages_sent{0};
  std::atomic<uint64_t> subscriptions{0};
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::shared_ptr<net::ConnectionStats> conn_stats = std::make_shared<net::ConnectionStats>();
  // Fixed once the server started.
  std::map<net::EventLoop*, std::shared_ptr<LoopState>> loops;

  std::shared_mutex core_mu;
  CoreApi* core ABSL_GUARDED_BY(core_mu) = nullptr;

  std::mutex mu;
  mqtt::TopicTrie<SubRef> trie ABSL_GUARDED_BY(mu);
  std::map<std::string, std::unique_ptr<SharedGroup>> shared_groups ABSL_GUARDED_BY(mu);
  struct Owner {
    LoopState* loop_state;
    uint64_t session_id;
  };
  std::map<std::string, Owner> clients ABSL_GUARDED_BY(mu);
  // Current $SYS topics and payloads, sent as retained messages on subscribe.
  std::map<std::string, std::string> sys_values ABSL_GUARDED_BY(mu);

  // Password checks run here, off the event loops.
  std::mutex auth_mu;
  std::condition_variable auth_cv;
  std::deque<absl::AnyInvocable<void()>> auth_jobs ABSL_GUARDED_BY(auth_mu);
  bool auth_stop ABSL_GUARDED_BY(auth_mu) = false;
  std::thread auth_thread;

  std::shared_ptr<LoopState> StateOf(LoopState* raw) {
    for (auto& [loop, st] : loops) {
      if (st.get() == raw) return st;
    }
    return nullptr;
  }

  // Runs `fn(core)` with the core, or `fn(nullptr)` once the server stopped.
  template <typename F>
  void WithCore(F&& fn) {
    std::shared_lock<std::shared_mutex> l(core_mu);
    fn(core);
  }

  // False when too many checks wait already (the client is refused as busy).
  bool RunAuth(absl::AnyInvocable<void()> job) {
    std::lock_guard<std::mutex> l(auth_mu);
    if (auth_jobs.size() >= 1000) return false;
    auth_jobs.push_back(std::move(job));
    auth_cv.notify_one();
    return true;
  }
  void AuthLoop() {
    std::unique_lock<std::mutex> l(auth_mu);
    for (;;) {
      auth_cv.wait(l, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(auth_mu) {
        return auth_stop || !auth_jobs.empty();
      });
      if (auth_jobs.empty()) return;
      auto job = std::move(auth_jobs.front());
      auth_jobs.pop_front();
      l.unlock();
      job();
      l.lock();
    }
  }

  // Gives a message a member of `key` left unacknowledged to another member (none: dropped).
  void RedeliverShared(const std::string& key, OutMessage out, uint64_t except_session) {
    std::optional<SubRef> target;
    {
      std::lock_guard<std::mutex> l(mu);
      auto it = shared_groups.find(key);
      if (it == shared_groups.end()) return;
      SharedGroup& g = *it->second;
      for (size_t i = 0; i < g.members.size() && !target; ++i) {
        const SubRef& r = g.members[g.next++ % g.members.size()];
        if (r.session_id != except_session) target = r;
      }
    }
    if (!target) return;
    std::shared_ptr<LoopState> st = StateOf(target->loop_state);
    if (!st) return;
    out.qos = static_cast<QoS>(
        std::min<uint8_t>(target->qos, static_cast<uint8_t>(out.message->qos())));
    out.from_log = false;
    PostDelivery(st, Delivery{target->session_id, std::move(out)});
  }
};

namespace {

using Hub = MqttServer::Hub;

uint8_t Qos(QoS q) { return static_cast<uint8_t>(q); }

// One MQTT client connection and its session. Lives on its connection's loop.
class MqttSession final : public MqttServer::Endpoint {
 public:
  MqttSession(std::shared_ptr<Hub> hub, std::shared_ptr<LoopState> loop_state,
              net::Connection& conn, std::unique_ptr<MqttServer::Transport> transport)
      : hub_(std::move(hub)),
        loop_state_(std::move(loop_state)),
        conn_(&conn),
        transport_(std::move(transport)),
        peer_(conn.peer().ToString()),
        id_(hub_->next_session_id.fetch_add(1)),
        decoder_(mqtt::DecoderOptions{.role = mqtt::Role::kServer,
                                      .maximum_packet_size = hub_->options.maximum_packet_size}) {
    loop_state_->sessions[id_] = this;
    hub_->live_sessions.fetch_add(1);
    connect_timer_ = std::make_unique<net::Timer>(conn.loop(), [this] {
      if (!connected_) {
        spdlog::debug("mqtt {}: no CONNECT in time", peer_);
        CloseNow();
      }
    });
    connect_timer_->Start(hub_->options.connect_timeout);
  }

  ~MqttSession() override { Cleanup(); }

  void OnBytes(std::string_view data) override {
    if (closing_) return;
    if (keep_alive_timer_) keep_alive_timer_->Start(keep_alive_timeout_);
    std::vector<mqtt::Packet> packets;
    std::optional<mqtt::Error> error = decoder_.Feed(data, &packets);
    bool cork = !corked_ && packets.size() > 1;
    if (cork) Cork();
    in_read_ = true;
    for (auto& p : packets) {
      if (closing_) break;
      if (connecting_) {
        deferred_.push_back(std::move(p));  // handled once CONNECT is answered
        continue;
      }
      Handle(p);
    }
    in_read_ = false;
    // Until the CONNACK, what the client sends waits in the socket, not in memory.
    if (connecting_ && !closing_) conn_->PauseReading();
    FlushQos0();
    if (cork && corked_) Uncork();
    if (error && !closing_) {
      if (connecting_) {
        deferred_error_ = std::move(error);
      } else {
        OnDecodeError(*error);
      }
    }
  }

  void OnClosed(const absl::Status& reason) override {
    if (!reason.ok()) spdlog::debug("mqtt {} ({}): closed: {}", peer_, client_id_, reason);
    Cleanup();
  }

  // A message for this session from the fan-out.
  void Deliver(OutMessage out) {
    if (!connected_ || closing_) {
      if (!out.shared_key.empty()) Redeliver(std::move(out));
      return;
    }
    const v1::Message& m = *out.message;
    if (out.shared_key.empty() && m.offset() != 0) SeenWhileLooking(m.partition(), m.offset());
    if (persistent_ && out.shared_key.empty() && m.offset() != 0) {
      uint32_t p = m.partition();
      if (auto it = P().catchup.find(p); it != P().catchup.end()) {
        // Read by the catch-up instead; remember that live delivery got this far.
        it->second.max_dropped = std::max(it->second.max_dropped, m.offset());
        return;
      }
      if (auto s = P().skip_through.find(p); s != P().skip_through.end() && m.offset() <= s->second) {
        return;  // already delivered by the catch-up
      }
      uint64_t& done = P().processed[p];
      done = std::max(done, m.offset());
      out.from_log = true;
    }
    Enqueue(std::move(out), /*enforce_quota=*/true);
  }

  // Another connection on this edge took this client id over (§3.1.4-3). `done` runs (on any
  // loop) once this session's final state is written to the core, so that the new connection
  // resumes from it.
  void TakenOver(absl::AnyInvocable<void()> done) {
    registered_ = false;  // the registry entry is the new owner's now
    taken_over_ = true;
    if (persistent_ && !core_closed_) {
      core_closed_ = true;
      CloseCoreSession(std::move(done));
    } else {
      done();
    }
    if (!closing_) CloseWith(ReasonCode::kSessionTakenOver);
  }

  void ServerStopping() { CloseWith(ReasonCode::kServerShuttingDown); }

  void ContinueConnect(bool authenticated) {
    if (closing_) return;
    if (!authenticated) {
      RefuseConnect(ReasonCode::kBadUserNameOrPassword);
      return;
    }
    mqtt::Connect& c = *pending_connect_;
    if (c.will && hub_->options.may_publish &&
        !hub_->options.may_publish(client_id_, username_, c.will->topic)) {
      RefuseConnect(ReasonCode::kNotAuthorized);
      return;
    }
    uint32_t expiry = 0;
    if (version_ == Version::kV5) {
      expiry = c.properties.session_expiry_interval.value_or(0);
    } else if (!c.clean_start) {
      expiry = hub_->options.max_session_expiry_s;
    }
    if (expiry > hub_->options.max_session_expiry_s) {
      expiry = hub_->options.max_session_expiry_s;
      expiry_capped_ = true;
    }
    expiry_s_ = expiry;
    // Take over an existing connection with the same client id on this edge.
    std::optional<Hub::Owner> previous;
    {
      std::lock_guard<std::mutex> l(hub_->mu);
      auto [it, inserted] = hub_->clients.try_emplace(client_id_, Hub::Owner{});
      if (!inserted) previous = it->second;
      it->second = Hub::Owner{loop_state_.get(), id_};
    }
    registered_ = true;
    std::shared_ptr<LoopState> old_st = previous ? hub_->StateOf(previous->loop_state) : nullptr;
    if (!old_st) {
      OpenCoreSession();
      return;
    }
    // The older connection first writes its session's final state (in-flight packets, cursor);
    // the session is opened after that, or after a second at most.
    auto st = loop_state_;
    uint64_t sid = id_;
    takeover_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] { OpenCoreSession(); });
    takeover_timer_->Start(std::chrono::milliseconds(1000));
    RunOnSession(old_st, previous->session_id, [st, sid](MqttSession& old) {
      old.TakenOver([st, sid] {
        RunOnSession(st, sid, [](MqttSession& s) { s.OpenCoreSession(); });
      });
    });
  }

  // Opens the session in the core when it is kept there (Clean Start 0, an expiry, or a will);
  // otherwise connects at once and, off the critical path, ends any session the core still
  // holds for this client id (§3.1.2.4: Clean Start 1 discards it).
  void OpenCoreSession() {
    if (closing_ || !connecting_ || session_requested_) return;
    session_requested_ = true;
    takeover_timer_.reset();
    mqtt::Connect& c = *pending_connect_;
    if (c.clean_start && expiry_s_ == 0 && !c.will) {
      DiscardStoredSession();
      FinishConnect(false, nullptr);
      return;
    }
    v1::OpenSessionRequest req;
    req.set_client_id(client_id_);
    req.set_edge_id(hub_->options.edge_id);
    req.set_clean_start(c.clean_start);
    req.set_expiry_interval_s(expiry_s_);
    if (c.will) {
      v1::WillMessage* w = req.mutable_will();
      *w->mutable_message() = ToMessage(c.will->topic, std::move(c.will->payload), c.will->qos,
                                        c.will->retain, c.will->properties);
      w->set_delay_interval_s(c.will->properties.will_delay_interval.value_or(0));
    }
    auto st = loop_state_;
    uint64_t sid = id_;
    std::shared_ptr<Hub> hub = hub_;
    bool opened = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      opened = true;
      core->OpenSession(std::move(req), [hub, st, sid](absl::StatusOr<v1::OpenSessionResponse> r) {
        st->loop->Post([hub, st, sid, r = std::move(r)]() mutable {
          auto it = st->sessions.find(sid);
          if (it != st->sessions.end() && !it->second->closing_) {
            it->second->SessionOpened(std::move(r));
          } else if (r.ok()) {
            // The client went away before its CONNACK: disconnect the session again.
            AbandonSession(hub, r->session().client_id(), r->session().owner_epoch());
          }
        });
      });
    });
    if (!opened) RefuseConnect(ReasonCode::kServerUnavailable);
  }

  static void AbandonSession(const std::shared_ptr<Hub>& hub, const std::string& client_id,
                             uint64_t epoch) {
    v1::CloseSessionRequest close;
    close.set_client_id(client_id);
    close.set_owner_epoch(epoch);
    close.set_publish_will(true);
    hub->WithCore([&](CoreApi* core) {
      if (core != nullptr) core->CloseSession(std::move(close), [](const absl::Status&) {});
    });
  }

  // A clean connection without a stored session: if the core holds one for this client id
  // (from an earlier Clean Start 0 connection, possibly still connected elsewhere), end it.
  void DiscardStoredSession() {
    std::string client_id = client_id_;
    std::string edge_id = hub_->options.edge_id;
    std::shared_ptr<Hub> hub = hub_;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      core->GetSession(client_id, [hub, client_id, edge_id](absl::StatusOr<v1::Session> s) {
        if (!s.ok()) return;  // none (NOT_FOUND), or the core is unreachable
        v1::OpenSessionRequest req;
        req.set_client_id(client_id);
        req.set_edge_id(edge_id);
        req.set_clean_start(true);
        req.set_expiry_interval_s(0);
        hub->WithCore([&](CoreApi* core) {
          if (core == nullptr) return;
          core->OpenSession(std::move(req), [hub](absl::StatusOr<v1::OpenSessionResponse> r) {
            if (!r.ok()) return;
            v1::CloseSessionRequest close;
            close.set_client_id(r->session().client_id());
            close.set_owner_epoch(r->session().owner_epoch());
            hub->WithCore([&](CoreApi* core) {
              if (core != nullptr) core->CloseSession(std::move(close), [](const absl::Status&) {});
            });
          });
        });
      });
    });
  }

  void SessionOpened(absl::StatusOr<v1::OpenSessionResponse> r) {
    if (closing_) return;
    if (!r.ok()) {
      spdlog::warn("mqtt {} ({}): cannot open session: {}", peer_, client_id_, r.status());
      RefuseConnect(ReasonCode::kServerUnavailable);
      return;
    }
    persistent_ = true;
    epoch_ = r->session().owner_epoch();
    FinishConnect(r->session_present(), &r->session());
  }

  // The core answered an inbound QoS 1/2 publish (index into inbound_acks_).
  void InboundPublishDone(uint64_t seq, const absl::Status& status) {
    if (closing_) return;
    if (seq < inbound_base_ || seq - inbound_base_ >= inbound_acks_.size()) return;
    InboundAck& a = inbound_acks_[seq - inbound_base_];
    a.done = true;
    a.status = status;
    FlushInboundAcks();
  }

  // The filters of a SUBSCRIBE are applied (and, for a persistent session, stored).
  // `lookup`: the retained lookup On(Subscribe) began, if any.
  void SubscribeReady(mqtt::Suback suback, std::vector<std::string> retained_filters,
                      std::vector<std::pair<size_t, std::string>> added,
                      const absl::Status& stored, std::optional<uint64_t> lookup) {
    if (closing_) return EndRetainedLookup(lookup);
    if (absl::IsFailedPrecondition(stored) || absl::IsNotFound(stored)) {
      EndRetainedLookup(lookup);
      Fenced();
      return;
    }
    if (!stored.ok()) {
      // Not stored: the new subscriptions are refused rather than lost at the next reconnect.
      spdlog::warn("mqtt {} ({}): cannot store subscriptions: {}", peer_, client_id_, stored);
      for (const auto& [index, filter] : added) {
        auto it = subscriptions_.find(filter);
        if (it == subscriptions_.end()) continue;
        Index(it->second, /*insert=*/false);
        RemoveCoreFilter(CoreFilter(it->second));
        subscriptions_.erase(it);
        hub_->subscriptions.fetch_sub(1, std::memory_order_relaxed);
        if (index < suback.reason_codes.size()) {
          suback.reason_codes[index] = ReasonCode::kUnspecifiedError;
        }
        retained_filters.erase(
            std::remove(retained_filters.begin(), retained_filters.end(), filter),
            retained_filters.end());
      }
    }
    Send(std::move(suback));
    // A persistent session is owed the new filters' messages from here on: record where.
    if (persistent_) StartCommit();
    if (!retained_filters.empty() && lookup.has_value()) {
      SendRetained(std::move(retained_filters), *lookup);
    } else {
      EndRetainedLookup(lookup);
    }
  }

  // A retained lookup begins: what this session receives from the log is recorded until it
  // ends. Returns its start, for WasSeenSince and EndRetainedLookup.
  uint64_t BeginRetainedLookup() {
    Extra& x = X();
    uint64_t start = x.seen_base + x.seen_order.size();
    x.lookups.insert(start);
    return start;
  }

  void SeenWhileLooking(uint32_t partition, uint64_t offset) {
    if (!extra_ || extra_->lookups.empty()) return;
    Extra& x = *extra_;
    if (x.seen.emplace(std::make_pair(partition, offset), x.seen_base + x.seen_order.size())
            .second) {
      x.seen_order.emplace_back(partition, offset);
    }
  }

  // (partition, offset) reached this session from the log after the lookup begun at `start`.
  bool WasSeenSince(uint64_t start, uint32_t partition, uint64_t offset) const {
    if (!extra_) return false;
    auto it = extra_->seen.find({partition, offset});
    return it != extra_->seen.end() && it->second >= start;
  }

  // Ends the lookup begun at `start` and forgets what no lookup under way needs.
  void EndRetainedLookup(std::optional<uint64_t> start) {
    if (!start.has_value() || !extra_) return;
    Extra& x = *extra_;
    auto it = x.lookups.find(*start);
    if (it == x.lookups.end()) return;
    x.lookups.erase(it);
    if (x.lookups.empty()) {
      x.seen.clear();
      x.seen_order.clear();
      x.seen_base = 0;
      return;
    }
    while (!x.seen_order.empty() && x.seen_base < *x.lookups.begin()) {
      x.seen.erase(x.seen_order.front());
      x.seen_order.pop_front();
      ++x.seen_base;
    }
  }

  // The core's answer to a SUBSCRIBE's retained lookup (sent after the SUBACK). A retained
  // message published once the subscription was in place is not a retained message for it
  // (§3.3.1.3: RETAIN 1 only for messages sent because of a new subscription): it arrives, or
  // arrived, live, and is not sent twice.
  void CoreRetainedFound(std::vector<std::string> filters, RetainedMessages r, uint64_t lookup) {
    std::vector<v1::Message> keep;
    keep.reserve(r.messages.size());
    for (auto& m : r.messages) {
      if (m.offset() != 0) {
        const uint32_t p = m.partition();
        if (WasSeenSince(lookup, p, m.offset())) continue;  // came live
        // A partition still being caught up (persistent session) is read by the catch-up, whose
        // pages may predate the new filter: there the retained copy is sent (at worst twice,
        // never lost).
        auto live = r.live_through.find(p);
        if (live != r.live_through.end() && m.offset() > live->second &&
            !(ps_ && ps_->catchup.count(p))) {
          continue;  // comes live
        }
      }
      keep.push_back(std::move(m));
    }
    RetainedFound(std::move(filters), std::move(keep), &r.epochs);
    EndRetainedLookup(lookup);
  }

  // `epochs`: of the messages' offsets, by partition (core lookups).
  void RetainedFound(std::vector<std::string> filters, std::vector<v1::Message> messages,
                     const std::map<uint32_t, uint64_t>* epochs = nullptr) {
    if (closing_ || !connected_) return;
    for (auto& m : messages) {
      if (queue_.size() >= 10 * hub_->options.max_queued_messages) {
        spdlog::info("mqtt {} ({}): too many retained messages queued; the rest are not sent",
                     peer_, client_id_);
        return;
      }
      std::optional<OutMessage> out = MatchOwn(m, &filters, /*retained=*/true);
      if (!out) continue;
      out->message = std::make_shared<const v1::Message>(std::move(m));
      out->retain = true;  // §3.3.1.3: sent because of a new subscription
      out->as_retained = out->message->offset() != 0;
      if (epochs != nullptr) {
        auto e = epochs->find(out->message->partition());
        if (e != epochs->end()) out->retained_epoch = e->second;
      }
      Enqueue(std::move(*out), /*enforce_quota=*/false);
    }
  }

  void CatchupPage(uint32_t partition, absl::StatusOr<v1::FetchResult> r) {
    fetch_in_flight_ = false;
    if (closing_) return;
    auto it = P().catchup.find(partition);
    if (it == P().catchup.end()) return PumpCatchup();
    Catchup& c = it->second;
    if (!r.ok()) {
      if (absl::IsOutOfRange(r.status()) || absl::IsInvalidArgument(r.status())) {
        spdlog::warn("mqtt {} ({}): partition {} cannot resume from its cursor ({}); live only",
                     peer_, client_id_, partition, r.status());
        FinishCatchup(partition, c.max_dropped);
        return PumpCatchup();
      }
      // Retry later (no leader right now).
      retry_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] { PumpCatchup(); });
      retry_timer_->Start(std::chrono::milliseconds(500));
      return;
    }
    for (auto& m : *r->mutable_messages()) {
      if (P().resent.count({partition, m.offset()})) continue;
      std::optional<OutMessage> out = MatchOwn(m, nullptr, false);
      if (!out) continue;
      m.set_partition(partition);
      SeenWhileLooking(partition, m.offset());
      out->message = std::make_shared<const v1::Message>(std::move(m));
      out->from_log = true;
      Enqueue(std::move(*out), /*enforce_quota=*/false);
    }
    c.pos.set_epoch(r->epoch());
    c.pos.set_offset(std::max(c.pos.offset(), r->evaluated_through()));
    if (r->evaluated_through() >= r->last_offset() && c.max_dropped <= c.pos.offset()) {
      FinishCatchup(partition, c.pos.offset());
    }
    PumpCatchup();
  }

  void ResendFound(uint16_t packet_id, uint8_t qos, uint64_t offset,
                   absl::StatusOr<v1::FetchResult> r) {
    fetch_in_flight_ = false;
    if (closing_) return;
    if (!r.ok() && !absl::IsOutOfRange(r.status()) && !absl::IsInvalidArgument(r.status()) &&
        !absl::IsNotFound(r.status())) {
      // No leader right now: try again (the message stays owed).
      retry_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] { PumpCatchup(); });
      retry_timer_->Start(std::chrono::milliseconds(500));
      return;
    }
    const v1::InflightMessage f = P().resend.front();
    P().resend.pop_front();
    bool sent = false;
    if (r.ok()) {
      for (auto& m : *r->mutable_messages()) {
        if (m.offset() != offset) continue;
        OutMessage out;
        out.qos = static_cast<QoS>(qos);
        // §3.3.4: the Subscription Identifiers of the subscriptions it (still) matches; Retain
        // As Published for a log message.
        if (auto match = MatchOwn(m, nullptr, f.retained())) {
          out.subscription_ids = std::move(match->subscription_ids);
          out.retain = match->retain;
        }
        out.message = std::make_shared<const v1::Message>(std::move(m));
        if (f.retained()) {
          out.retain = true;
          out.as_retained = true;
          out.retained_epoch = f.epoch();
        } else {
          out.from_log = true;
          P().unacked[out.message->partition()].insert(offset);
        }
        // Never sent before when it was still queued at the end of the last connection.
        SendOut(std::move(out), packet_id, /*dup=*/!f.queued());
        sent = true;
        break;
      }
    }
    // Not resent: the catch-up delivers it like any other message it still matches.
    if (!sent && !f.retained()) P().resent.erase({f.partition(), f.offset()});
    if (!inflight_.count(packet_id) && extra_) extra_->reserved_ids.erase(packet_id);
    PumpCatchup();
  }


  // A live position snapshot taken before this ran: every delivery at or before it was
  // processed.
  void LiveSnapshot(std::map<uint32_t, v1::PartitionPosition> snapshot) {
    if (closing_) return;
    for (auto& [p, pos] : snapshot) {
      if (P().catchup.count(p)) continue;
      auto it = P().safe.find(p);
      if (it == P().safe.end() || pos.epoch() > it->second.epoch() ||
          (pos.epoch() == it->second.epoch() && pos.offset() > it->second.offset())) {
        P().safe[p] = pos;
      }
    }
    CommitCursor();
  }

  void UpdateDone(const absl::Status& s) {
    if (closing_) return;
    if (absl::IsFailedPrecondition(s) || absl::IsNotFound(s)) Fenced();
  }

  void Redeliver(OutMessage out) {
    std::string key = out.shared_key;
    hub_->RedeliverShared(key, std::move(out), id_);
  }

 private:
  struct InboundAck {
    uint16_t packet_id;
    QoS qos;
    bool done = false;
    absl::Status status{};
    ReasonCode refused = ReasonCode::kSuccess;  // set: answer with it, nothing published
  };
  struct SubState {
    mqtt::Subscription options;  // topic_filter as sent (with any $share prefix)
    std::string filter;          // without the $share prefix
    std::string shared_key;      // non-empty for a shared subscription
    uint32_t subscription_id = 0;
  };
  enum class OutState { kAwaitAck, kAwaitRec, kAwaitComp };
  struct Inflight {
    OutMessage out;
    OutState state;
  };
  struct Catchup {
    v1::PartitionPosition pos;
    uint64_t max_dropped = 0;
  };

  bool Send(const mqtt::Packet& packet) {
    std::string out;
    absl::Status s = mqtt::Encode(packet, version_, corked_ ? &out_buf_ : &out);
    if (!s.ok()) {
      spdlog::error("mqtt {}: cannot encode {}: {}", peer_,
                    mqtt::PacketTypeName(mqtt::TypeOf(packet)), s);
      return false;
    }
    if (corked_) return true;
    return transport_->Send(std::move(out));
  }

 public:
  // Between Cork and Uncork, packets are gathered and written to the connection at once (one
  // write system call for a batch of deliveries or for the answers to one read).
  bool corked() const { return corked_; }
  void Cork() { corked_ = true; }
  void Uncork() {
    corked_ = false;
    if (!out_buf_.empty()) {
      std::string out = std::move(out_buf_);
      out_buf_.clear();
      transport_->Send(std::move(out));
    }
  }

 private:
  void CloseNow() {
    closing_ = true;
    if (corked_) Uncork();
    transport_->Close();
  }

  // 5.0: DISCONNECT with `code`, then close; 3.1.1: close.
  void CloseWith(ReasonCode code) {
    if (closing_) return;
    if (connected_ && version_ == Version::kV5 &&
        mqtt::ReasonCodeAllowedIn(code, mqtt::PacketType::kDisconnect)) {
      Send(mqtt::Disconnect{.reason_code = code});
    }
    CloseNow();
  }

  void Fenced() {
    spdlog::info("mqtt {} ({}): session taken over through another edge", peer_, client_id_);
    taken_over_ = true;
    CloseWith(ReasonCode::kSessionTakenOver);
  }

  void RefuseConnect(ReasonCode code) {
    mqtt::Connack ack{.reason_code = code};
    if (version_ == Version::kV311) {
      auto rc = mqtt::ConnackReturnCodeV311(code);
      if (!rc) ack.reason_code = ReasonCode::kServerUnavailable;
    }
    Send(ack);
    connecting_ = false;
    CloseNow();
  }

  void OnDecodeError(const mqtt::Error& e) {
    spdlog::debug("mqtt {}: {} ({})", peer_, e.message, mqtt::ReasonCodeName(e.reason_code));
    if (!connected_ && e.packet_type == mqtt::PacketType::kConnect) {
      // §3.2.2.2 / 3.1.1 §3.2.2.3: answer a bad CONNECT with a CONNACK when one can say why.
      std::optional<Version> v = decoder_.version();
      if (!v) {
        // An unknown protocol level gets the 3.1.1 "unacceptable protocol version" answer
        // (§3.1.2.2, 3.1.1 §3.1.2.2); a packet that is not MQTT at all, only the close.
        version_ = Version::kV311;
        if (e.reason_code == ReasonCode::kUnsupportedProtocolVersion) {
          Send(mqtt::Connack{.reason_code = ReasonCode::kUnsupportedProtocolVersion});
        }
      } else {
        version_ = *v;
        if (version_ == Version::kV5 || mqtt::ConnackReturnCodeV311(e.reason_code).has_value()) {
          Send(mqtt::Connack{.reason_code = e.reason_code});
        }
      }
      CloseNow();
      return;
    }
    CloseWith(e.reason_code);
  }

  void Handle(mqtt::Packet& packet) {
    if (!connected_ && !std::holds_alternative<mqtt::Connect>(packet)) {
      CloseNow();  // the decoder enforces CONNECT first; defensive
      return;
    }
    std::visit([this](auto& p) { On(p); }, packet);
  }

  // ------------------------------------------------------------------------------------------
  // CONNECT

  void On(mqtt::Connect& c) {
    if (connected_ || connecting_) {  // §3.1.0-2: a second CONNECT is a Protocol Error
      CloseWith(ReasonCode::kProtocolError);
      return;
    }
    version_ = decoder_.version().value_or(Version::kV311);
    if (version_ == Version::kV5 && c.properties.authentication_method) {
      // Enhanced authentication (§4.12) is not offered.
      RefuseConnect(ReasonCode::kBadAuthenticationMethod);
      return;
    }
    client_id_ = c.client_id;
    if (client_id_.empty()) {
      // 5.0 §3.1.3.1: assign one and say so; 3.1.1: the decoder refused empty + Clean Session 0.
      client_id_ = RandomClientId();
      assigned_id_ = version_ == Version::kV5;
    }
    username_ = c.username;
    connecting_ = true;
    pending_connect_ = std::make_unique<mqtt::Connect>(std::move(c));
    const MqttServerOptions& o = hub_->options;
    if (!o.authenticate) {
      ContinueConnect(true);
      return;
    }
    if (!username_) {
      if (o.allow_anonymous) {
        ContinueConnect(true);
      } else {
        RefuseConnect(ReasonCode::kNotAuthorized);
      }
      return;
    }
    auto st = loop_state_;
    uint64_t sid = id_;
    std::string user = *username_;
    std::string password = pending_connect_->password.value_or("");
    std::shared_ptr<Hub> hub = hub_;
    bool queued =
        hub_->RunAuth([hub, st, sid, user = std::move(user), password = std::move(password)] {
          bool ok = hub->options.authenticate(user, password);
          RunOnSession(st, sid, [ok](MqttSession& s) { s.ContinueConnect(ok); });
        });
    if (!queued) RefuseConnect(ReasonCode::kServerBusy);
  }

  void FinishConnect(bool session_present, const v1::Session* session) {
    mqtt::Connect& c = *pending_connect_;
    const MqttServerOptions& o = hub_->options;
    mqtt::Connack ack;
    ack.session_present = session_present;
    uint16_t keep_alive = c.keep_alive;
    // Only a 5.0 client can be told (Server Keep Alive); a 3.1.1 client keeps its own.
    if (version_ == Version::kV5 && o.max_keep_alive_s != 0 &&
        (keep_alive == 0 || keep_alive > o.max_keep_alive_s)) {
      keep_alive = o.max_keep_alive_s;
      if (version_ == Version::kV5) ack.properties.server_keep_alive = keep_alive;
    }
    if (version_ == Version::kV5) {
      if (assigned_id_) ack.properties.assigned_client_identifier = client_id_;
      if (c.properties.receive_maximum) window_ = *c.properties.receive_maximum;
      if (c.properties.maximum_packet_size) client_max_packet_ = *c.properties.maximum_packet_size;
      client_alias_max_ = c.properties.topic_alias_maximum.value_or(0);
      ack.properties.maximum_packet_size = o.maximum_packet_size;
      ack.properties.topic_alias_maximum = o.topic_alias_maximum;
      if (expiry_capped_) ack.properties.session_expiry_interval = expiry_s_;
    } else {
      window_ = o.default_inflight;
    }
    if (window_ == 0) window_ = o.default_inflight;
    connecting_ = false;
    connected_ = true;
    connect_timer_.reset();
    conn_->ResumeReading();
    hub_->connected.fetch_add(1);
    if (keep_alive > 0) {
      keep_alive_timeout_ = std::chrono::milliseconds(keep_alive * 1500);
      keep_alive_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] {
        spdlog::debug("mqtt {} ({}): keep-alive timeout", peer_, client_id_);
        CloseWith(ReasonCode::kKeepAliveTimeout);
      });
      keep_alive_timer_->Start(keep_alive_timeout_);
    }
    has_will_ = c.will.has_value();
    pending_connect_.reset();
    Send(ack);
    if (persistent_) {
      commit_timer_ = std::make_unique<net::Timer>(conn_->loop(), [this] { StartCommit(); });
      commit_timer_->Start(o.cursor_commit_interval, o.cursor_commit_interval);
    }
    if (session != nullptr && session_present) Resume(*session);
    LazyDeque<mqtt::Packet> deferred = std::move(deferred_);
    while (!deferred.empty()) {
      if (closing_) return;
      mqtt::Packet p = std::move(deferred.front());
      deferred.pop_front();
      Handle(p);
    }
    if (deferred_error_ && !closing_) OnDecodeError(*deferred_error_);
  }

  // Picks a stored session up: subscriptions, in-flight exchanges, and the messages it missed.
  void Resume(const v1::Session& s) {
    for (const auto& sub : s.subscriptions()) {
      SubState state;
      state.options.topic_filter = sub.filter();
      state.options.max_qos = static_cast<QoS>(sub.max_qos());
      state.options.no_local = sub.no_local();
      state.options.retain_as_published = sub.retain_as_published();
      state.options.retain_handling = static_cast<mqtt::RetainHandling>(sub.retain_handling());
      state.subscription_id = sub.subscription_identifier();
      if (!SplitFilter(sub.filter(), &state)) continue;
      Index(state, /*insert=*/true);
      ++pending_filters_;
      std::string filter = CoreFilter(state);
      subscriptions_[sub.filter()] = std::move(state);
      AddCoreFilter(filter, [this] {
        if (--pending_filters_ == 0) {
          catchup_ready_ = true;
          PumpCatchup();
        }
      });
    }
    for (const auto& f : s.inflight()) {
      uint16_t id = static_cast<uint16_t>(f.packet_id());
      P().stored_inflight.push_back({f.direction(), f.packet_id()});
      if (f.direction() == v1::INFLIGHT_DIRECTION_INBOUND) {
        if (f.state() == v1::INFLIGHT_STATE_AWAITING_REL) X().awaiting_rel.insert(id);
        continue;
      }
      if (f.state() == v1::INFLIGHT_STATE_AWAITING_COMP) {
        OutMessage done;
        done.qos = QoS::kExactlyOnce;
        inflight_[id] = Inflight{std::move(done), OutState::kAwaitComp};
        Send(mqtt::Pubrel{.packet_id = id});
      } else if (f.state() == v1::INFLIGHT_STATE_AWAITING_ACK) {
        X().reserved_ids.insert(id);
        P().resend.push_back(f);
        // The catch-up skips a log message being resent (not the log copy of a retained one).
        if (!f.retained()) P().resent.insert({f.partition(), f.offset()});
      }
    }
    for (const auto& pos : s.cursor().positions()) {
      P().catchup[pos.partition()] = Catchup{pos, 0};
      P().catchup_order.push_back(pos.partition());
    }
    if (pending_filters_ == 0) {
      catchup_ready_ = true;
      PumpCatchup();
    }
  }

  // ------------------------------------------------------------------------------------------
  // Inbound PUBLISH

  static v1::Message ToMessage(std::string topic, std::string payload, QoS qos, bool retain,
                               const mqtt::Properties& pr) {
    v1::Message m;
    m.set_topic(std::move(topic));
    m.set_payload(std::move(payload));
    m.set_qos(static_cast<v1::QoS>(qos));
    m.set_retain(retain);
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
    return m;
  }

  void On(mqtt::Publish& p) {
    if (version_ == Version::kV5 && p.properties.topic_alias) {
      // §3.3.2.3.4: an alias is set by a PUBLISH with a topic, used by one without.
      uint16_t alias = *p.properties.topic_alias;
      if (alias == 0 || alias > hub_->options.topic_alias_maximum) {
        CloseWith(ReasonCode::kTopicAliasInvalid);
        return;
      }
      if (!p.topic.empty()) {
        X().inbound_aliases[alias] = p.topic;
      } else {
        auto it = X().inbound_aliases.find(alias);
        if (it == X().inbound_aliases.end()) {
          CloseWith(ReasonCode::kProtocolError);
          return;
        }
        p.topic = it->second;
      }
    }
    if (p.topic.empty()) {
      CloseWith(ReasonCode::kProtocolError);
      return;
    }
    hub_->messages_received.fetch_add(1, std::memory_order_relaxed);
    if (p.qos == QoS::kExactlyOnce) {
      if (X().awaiting_rel.count(p.packet_id)) {
        // §4.3.3: a resent PUBLISH of a message already received is acknowledged again only.
        inbound_acks_.push_back(InboundAck{.packet_id = p.packet_id, .qos = p.qos, .done = true});
        FlushInboundAcks();
        return;
      }
      if (X().inbound_publishing.count(p.packet_id)) return;  // PUBREC follows once committed
    }
    const MqttServerOptions& o = hub_->options;
    if (o.may_publish && !o.may_publish(client_id_, username_, p.topic)) {
      spdlog::debug("mqtt {} ({}): publish to {} denied", peer_, client_id_, p.topic);
      if (p.qos == QoS::kAtMostOnce) return;  // dropped
      inbound_acks_.push_back(InboundAck{.packet_id = p.packet_id,
                                         .qos = p.qos,
                                         .done = true,
                                         .refused = ReasonCode::kNotAuthorized});
      FlushInboundAcks();
      return;
    }
    v1::Message m = ToMessage(std::move(p.topic), std::move(p.payload), p.qos, p.retain,
                              p.properties);
    m.set_publisher_client_id(client_id_);
    if (p.qos == QoS::kAtMostOnce) {
      // QoS 0 messages of one read go to the core together.
      qos0_batch_.push_back(std::move(m));
      if (!in_read_) FlushQos0();
      return;
    }
    FlushQos0();  // keeps the client's order
    std::vector<v1::Message> batch;
    batch.push_back(std::move(m));
    uint64_t seq = inbound_base_ + inbound_acks_.size();
    inbound_acks_.push_back(InboundAck{.packet_id = p.packet_id, .qos = p.qos});
    if (p.qos == QoS::kExactlyOnce) X().inbound_publishing.insert(p.packet_id);
    std::shared_ptr<LoopState> st = loop_state_;
    uint64_t sid = id_;
    bool sent = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      sent = true;
      core->Publish(std::move(batch), [st, sid, seq](const absl::Status& s) {
        RunOnSession(st, sid, [seq, s](MqttSession& x) { x.InboundPublishDone(seq, s); });
      });
    });
    if (!sent) InboundPublishDone(seq, absl::UnavailableError("server stopping"));
  }

  void FlushQos0() {
    if (qos0_batch_.empty()) return;
    std::vector<v1::Message> batch = std::move(qos0_batch_);
    qos0_batch_.clear();
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      core->Publish(std::move(batch), [](const absl::Status& s) {
        if (!s.ok()) spdlog::debug("mqtt: QoS 0 publish failed: {}", s);
      });
    });
  }

  // §4.6: PUBACKs and PUBRECs go out in the order the PUBLISHes came.
  void FlushInboundAcks() {
    while (!inbound_acks_.empty() && inbound_acks_.front().done && !closing_) {
      InboundAck a = std::move(inbound_acks_.front());
      inbound_acks_.pop_front();
      ++inbound_base_;
      if (a.qos == QoS::kExactlyOnce) X().inbound_publishing.erase(a.packet_id);
      ReasonCode rc = a.refused;
      if (!a.status.ok()) {
        spdlog::warn("mqtt {} ({}): publish failed: {}", peer_, client_id_, a.status);
        if (version_ == Version::kV311) {
          // 3.1.1 has no negative acknowledgement: close, the client resends on its next
          // connection.
          CloseNow();
          return;
        }
        rc = ReasonCode::kUnspecifiedError;
      }
      if (a.qos == QoS::kAtLeastOnce) {
        Send(mqtt::Puback{.packet_id = a.packet_id,
                          .reason_code = version_ == Version::kV5 ? rc : ReasonCode::kSuccess});
        continue;
      }
      // QoS 2: a refused message (5.0) ends the exchange with the PUBREC; otherwise the packet
      // id waits for its PUBREL (3.1.1 has no way to refuse, so a denied message is dropped
      // and the exchange completes normally).
      if (rc == ReasonCode::kSuccess || version_ == Version::kV311) {
        X().awaiting_rel.insert(a.packet_id);
        rc = ReasonCode::kSuccess;
      }
      Send(mqtt::Pubrec{.packet_id = a.packet_id, .reason_code = rc});
    }
  }

  void On(mqtt::Pubrel& r) {
    // §4.3.3: PUBCOMP whether or not the id is known; 5.0 says which.
    bool known = X().awaiting_rel.erase(r.packet_id) > 0;
    Send(mqtt::Pubcomp{.packet_id = r.packet_id,
                       .reason_code = known || version_ == Version::kV311
                                          ? ReasonCode::kSuccess
                                          : ReasonCode::kPacketIdentifierNotFound});
  }

  // ------------------------------------------------------------------------------------------
  // Outbound acknowledgements

  void On(mqtt::Puback& a) {
    auto it = inflight_.find(a.packet_id);
    if (it == inflight_.end() || it->second.state != OutState::kAwaitAck) return;
    Release(it);
  }

  void On(mqtt::Pubrec& r) {
    auto it = inflight_.find(r.packet_id);
    if (it == inflight_.end() || it->second.state != OutState::kAwaitRec) {
      Send(mqtt::Pubrel{.packet_id = r.packet_id,
                        .reason_code = version_ == Version::kV5
                                           ? ReasonCode::kPacketIdentifierNotFound
                                           : ReasonCode::kSuccess});
      return;
    }
    Acknowledged(it->second.out);
    if (static_cast<uint8_t>(r.reason_code) >= 0x80) {  // §4.3.3: the exchange ends here
      inflight_.erase(it);
      DrainQueue();
      return;
    }
    it->second.state = OutState::kAwaitComp;
    it->second.out.message.reset();
    Send(mqtt::Pubrel{.packet_id = r.packet_id});
  }

  void On(mqtt::Pubcomp& c) {
    auto it = inflight_.find(c.packet_id);
    if (it == inflight_.end() || it->second.state != OutState::kAwaitComp) return;
    inflight_.erase(it);
    DrainQueue();
  }

  void Release(std::map<uint16_t, Inflight>::iterator it) {
    Acknowledged(it->second.out);
    inflight_.erase(it);
    DrainQueue();
  }

  // The client has the message: it no longer holds the cursor back.
  void Acknowledged(const OutMessage& out) {
    if (!out.from_log || !out.message) return;
    auto it = P().unacked.find(out.message->partition());
    if (it == P().unacked.end()) return;
    auto one = it->second.find(out.message->offset());
    if (one != it->second.end()) it->second.erase(one);
    if (it->second.empty()) P().unacked.erase(it);
  }

  // ------------------------------------------------------------------------------------------
  // SUBSCRIBE / UNSUBSCRIBE

  // Fills state.filter and state.shared_key from state.options.topic_filter.
  static bool SplitFilter(const std::string& as_sent, SubState* state) {
    if (!mqtt::IsSharedSubscription(as_sent)) {
      state->filter = as_sent;
      return !mqtt::ValidateTopicFilter(as_sent).has_value();
    }
    mqtt::SharedSubscription shared;
    if (mqtt::ParseSharedSubscription(as_sent, &shared).has_value()) return false;
    state->filter = std::string(shared.topic_filter);
    state->shared_key = as_sent;
    return true;
  }

  // What the core's streams carry for a subscription: its filter, or for a shared one the whole
  // `$share/{group}/{filter}`, so that the core gives each message to one edge of the group.
  static const std::string& CoreFilter(const SubState& s) {
    return s.shared_key.empty() ? s.filter : s.shared_key;
  }

  SubRef RefOf(const SubState& s) const {
    return SubRef{loop_state_.get(),
                  id_,
                  &client_id_,
                  Qos(s.options.max_qos),
                  s.options.no_local,
                  s.options.retain_as_published,
                  s.subscription_id};
  }

  // Adds (or removes) a subscription to (from) the edge's index.
  void Index(const SubState& s, bool insert) {
    std::lock_guard<std::mutex> l(hub_->mu);
    if (s.shared_key.empty()) {
      if (insert) {
        hub_->trie.Insert(s.filter, RefOf(s));
      } else {
        hub_->trie.Remove(s.filter, RefOf(s));
      }
      return;
    }
    auto it = hub_->shared_groups.find(s.shared_key);
    if (insert) {
      if (it == hub_->shared_groups.end()) {
        auto g = std::make_unique<SharedGroup>();
        g->key = s.shared_key;
        it = hub_->shared_groups.emplace(s.shared_key, std::move(g)).first;
      }
      it->second->members.push_back(RefOf(s));
      return;
    }
    if (it == hub_->shared_groups.end()) return;
    auto& members = it->second->members;
    members.erase(std::remove(members.begin(), members.end(), RefOf(s)), members.end());
    if (members.empty()) hub_->shared_groups.erase(it);
  }

  void AddCoreFilter(const std::string& filter, absl::AnyInvocable<void()> on_applied) {
    auto st = loop_state_;
    uint64_t sid = id_;
    auto shared_cb = std::make_shared<absl::AnyInvocable<void()>>(std::move(on_applied));
    bool added = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      added = true;
      core->AddFilter(filter, [st, sid, shared_cb] {
        RunOnSession(st, sid, [shared_cb](MqttSession&) { (*shared_cb)(); });
      });
    });
    if (!added) (*shared_cb)();
  }

  void RemoveCoreFilter(const std::string& filter) {
    hub_->WithCore([&](CoreApi* core) {
      if (core != nullptr) core->RemoveFilter(filter);
    });
  }

  void On(mqtt::Subscribe& s) {
    uint32_t sub_id = s.properties.subscription_identifiers.empty()
                          ? 0
                          : s.properties.subscription_identifiers.front();
    // §3.8.3.1: No Local on a shared subscription is a Protocol Error; checked before any of
    // the packet's subscriptions takes effect.
    for (const auto& sub : s.subscriptions) {
      if (sub.no_local && mqtt::IsSharedSubscription(sub.topic_filter)) {
        CloseWith(ReasonCode::kProtocolError);
        return;
      }
    }
    mqtt::Suback ack{.packet_id = s.packet_id};
    std::vector<std::string> to_apply;
    std::vector<std::string> retained;
    std::vector<std::pair<size_t, std::string>> added;  // (index in the SUBACK, filter as sent)
    v1::SessionUpdate update;
    for (const auto& sub : s.subscriptions) {
      SubState state;
      state.options = sub;
      state.subscription_id = sub_id;
      if (!SplitFilter(sub.topic_filter, &state)) {
        ack.reason_codes.push_back(version_ == Version::kV5 ? ReasonCode::kTopicFilterInvalid
                                                            : ReasonCode::kUnspecifiedError);
        continue;
      }
      const MqttServerOptions& o = hub_->options;
      if (o.may_subscribe && !o.may_subscribe(client_id_, username_, state.filter)) {
        spdlog::debug("mqtt {} ({}): subscription to {} denied", peer_, client_id_,
                      sub.topic_filter);
        ack.reason_codes.push_back(version_ == Version::kV5 ? ReasonCode::kNotAuthorized
                                                            : ReasonCode::kUnspecifiedError);
        continue;
      }
      ack.reason_codes.push_back(static_cast<ReasonCode>(Qos(sub.max_qos)));
      auto it = subscriptions_.find(sub.topic_filter);
      bool existed = it != subscriptions_.end();
      if (existed) {
        Index(it->second, /*insert=*/false);  // §3.8.4: replaced
      } else {
        to_apply.push_back(CoreFilter(state));
        added.emplace_back(ack.reason_codes.size() - 1, sub.topic_filter);
        hub_->subscriptions.fetch_add(1, std::memory_order_relaxed);
      }
      Index(state, /*insert=*/true);
      if (state.shared_key.empty() &&
          (sub.retain_handling == mqtt::RetainHandling::kSendOnSubscribe ||
           (sub.retain_handling == mqtt::RetainHandling::kSendOnNewSubscribe && !existed))) {
        retained.push_back(sub.topic_filter);
      }
      if (persistent_) {
        v1::SessionSubscription* ps = update.add_put_subscriptions();
        ps->set_filter(sub.topic_filter);
        ps->set_max_qos(static_cast<v1::QoS>(sub.max_qos));
        ps->set_no_local(sub.no_local);
        ps->set_retain_as_published(sub.retain_as_published);
        ps->set_retain_handling(static_cast<v1::RetainHandling>(sub.retain_handling));
        ps->set_subscription_identifier(sub_id);
      }
      subscriptions_[sub.topic_filter] = std::move(state);
    }
    // The SUBACK leaves once the core delivers for every new filter (so a client that
    // publishes after its SUBACK gets its own messages) and a persistent session stored them.
    struct Waiting {
      size_t remaining = 1;
      mqtt::Suback ack;
      std::vector<std::string> retained;
      std::vector<std::pair<size_t, std::string>> added;
      absl::Status stored;
      std::optional<uint64_t> lookup;
    };
    auto w = std::make_shared<Waiting>();
    // From here on, what this session receives from the log is recorded until the lookup ends.
    if (!retained.empty()) w->lookup = BeginRetainedLookup();
    w->ack = std::move(ack);
    w->retained = std::move(retained);
    w->added = std::move(added);
    auto done_one = [w](MqttSession& self) {
      if (--w->remaining == 0) {
        self.SubscribeReady(std::move(w->ack), std::move(w->retained), std::move(w->added),
                            w->stored, w->lookup);
      }
    };
    w->remaining += to_apply.size();
    for (const auto& f : to_apply) {
      AddCoreFilter(f, [this, done_one] { done_one(*this); });
    }
    if (persistent_ && update.put_subscriptions_size() > 0) {
      // The session is owed the new filters' messages from here on: their partitions' current
      // positions are stored with the subscriptions (a partition this edge has not read yet is
      // asked for its end first).
      std::vector<uint32_t> unknown;
      hub_->WithCore([&](CoreApi* core) {
        if (core == nullptr) return;
        for (uint32_t p : RelevantPartitions(core->partitions())) {
          if (P().safe.count(p) || P().processed.count(p) || P().catchup.count(p)) continue;
          if (auto live = core->LivePosition(p)) {
            live->set_partition(p);
            P().safe[p] = *live;
            *update.add_commit_positions() = *live;
          } else {
            unknown.push_back(p);
          }
        }
      });
      auto st = loop_state_;
      uint64_t sid = id_;
      StorePositions(std::move(update), w, done_one);
      for (uint32_t p : unknown) {
        ++w->remaining;
        bool asked = false;
        hub_->WithCore([&](CoreApi* core) {
          if (core == nullptr) return;
          asked = true;
          core->Fetch(p, v1::PartitionPosition(), {"#"}, 1,
                      [st, sid, p, w, done_one](absl::StatusOr<v1::FetchResult> r) {
                        RunOnSession(st, sid, [p, w, done_one,
                                               r = std::move(r)](MqttSession& self) mutable {
                          if (!r.ok()) {
                            w->stored = r.status();
                          } else {
                            v1::PartitionPosition end;
                            end.set_partition(p);
                            end.set_epoch(r->epoch());
                            end.set_offset(r->last_offset());
                            if (!self.P().safe.count(p) && !self.P().processed.count(p)) {
                              self.P().safe[p] = end;
                              v1::SessionUpdate u;
                              *u.add_commit_positions() = end;
                              self.StorePositions(std::move(u), w, done_one);
                            }
                          }
                          done_one(self);
                        });
                      });
        });
        if (!asked) {
          w->stored = absl::UnavailableError("server stopping");
          done_one(*this);
        }
      }
    }
    done_one(*this);
  }

  // Writes a subscription/position update of a SUBSCRIBE; the SUBACK waits for it (`w`).
  template <typename W, typename F>
  void StorePositions(v1::SessionUpdate u, W w, F done_one) {
    ++w->remaining;
    u.set_client_id(client_id_);
    u.set_owner_epoch(epoch_);
    auto st = loop_state_;
    uint64_t sid = id_;
    bool sent = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      sent = true;
      core->UpdateSession(std::move(u), [st, sid, w, done_one](const absl::Status& s) {
        RunOnSession(st, sid, [w, done_one, s](MqttSession& self) {
          if (!s.ok()) w->stored = s;
          done_one(self);
        });
      });
    });
    if (!sent) {
      w->stored = absl::UnavailableError("server stopping");
      done_one(*this);
    }
  }

  void On(mqtt::Unsubscribe& u) {
    mqtt::Unsuback ack{.packet_id = u.packet_id};
    v1::SessionUpdate update;
    for (const auto& f : u.topic_filters) {
      auto it = subscriptions_.find(f);
      if (it == subscriptions_.end()) {
        ack.reason_codes.push_back(ReasonCode::kNoSubscriptionExisted);
        continue;
      }
      Index(it->second, /*insert=*/false);
      RemoveCoreFilter(CoreFilter(it->second));
      subscriptions_.erase(it);
      hub_->subscriptions.fetch_sub(1, std::memory_order_relaxed);
      if (persistent_) update.add_remove_subscriptions(f);
      ack.reason_codes.push_back(ReasonCode::kSuccess);
    }
    if (update.remove_subscriptions_size() > 0) SendUpdate(std::move(update));
    Send(ack);
  }

  void SendUpdate(v1::SessionUpdate update) {
    update.set_client_id(client_id_);
    update.set_owner_epoch(epoch_);
    auto st = loop_state_;
    uint64_t sid = id_;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      core->UpdateSession(std::move(update), [st, sid](const absl::Status& s) {
        RunOnSession(st, sid, [s](MqttSession& self) { self.UpdateDone(s); });
      });
    });
  }

  // Retained messages for new subscriptions (and the edge's $SYS topics).
  void SendRetained(std::vector<std::string> filters, uint64_t lookup) {
    std::vector<std::string> inner;
    std::vector<v1::Message> sys;
    {
      std::lock_guard<std::mutex> l(hub_->mu);
      std::set<std::string> seen;
      for (const auto& f : filters) {
        for (const auto& [topic, payload] : hub_->sys_values) {
          if (!mqtt::TopicMatches(f, topic) || !seen.insert(topic).second) continue;
          v1::Message m;
          m.set_topic(topic);
          m.set_payload(payload);
          m.set_retain(true);
          sys.push_back(std::move(m));
        }
      }
    }
    for (const auto& f : filters) inner.push_back(f);
    if (!sys.empty()) RetainedFound(filters, std::move(sys));
    auto st = loop_state_;
    uint64_t sid = id_;
    bool asked = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      asked = true;
      core->GetRetained(
          inner, 10000, [st, sid, filters, lookup](absl::StatusOr<RetainedMessages> r) mutable {
            if (!r.ok()) {
              spdlog::warn("mqtt: retained lookup failed: {}", r.status());
              RunOnSession(st, sid, [lookup](MqttSession& s) { s.EndRetainedLookup(lookup); });
              return;
            }
            RunOnSession(st, sid, [filters = std::move(filters), m = std::move(*r),
                                   lookup](MqttSession& s) mutable {
              s.CoreRetainedFound(std::move(filters), std::move(m), lookup);
            });
          });
    });
    if (!asked) EndRetainedLookup(lookup);
  }

  // What this session's subscriptions make of a message it reads itself (catch-up, retained):
  // nullopt when none matches. `only`: consider only these filters (as sent).
  std::optional<OutMessage> MatchOwn(const v1::Message& m, const std::vector<std::string>* only,
                                     bool retained) {
    std::optional<OutMessage> out;
    uint8_t qos = 0;
    for (const auto& [as_sent, s] : subscriptions_) {
      if (!s.shared_key.empty()) continue;
      if (only && std::find(only->begin(), only->end(), as_sent) == only->end()) continue;
      if (!mqtt::TopicMatches(s.filter, m.topic())) continue;
      if (s.options.no_local && m.publisher_client_id() == client_id_) continue;
      if (!out) out.emplace();
      qos = std::max(qos, Qos(s.options.max_qos));
      if (s.subscription_id != 0) out->subscription_ids.push_back(s.subscription_id);
      if (!retained && s.options.retain_as_published && m.retain()) out->retain = true;
    }
    if (out) out->qos = static_cast<QoS>(std::min<uint8_t>(qos, static_cast<uint8_t>(m.qos())));
    return out;
  }

  void On(mqtt::Pingreq&) { Send(mqtt::Pingresp{}); }

  void On(mqtt::Disconnect& d) {
    if (version_ == Version::kV5 && d.properties.session_expiry_interval) {
      // §3.14.2.2.2: a session that expires at disconnection cannot be given a new expiry.
      if (expiry_s_ == 0 && *d.properties.session_expiry_interval != 0) {
        CloseWith(ReasonCode::kProtocolError);
        return;
      }
      disconnect_expiry_ =
          std::min(*d.properties.session_expiry_interval, hub_->options.max_session_expiry_s);
    }
    // §3.14.4: a normal DISCONNECT discards the will; 0x04 asks for it.
    clean_disconnect_ = d.reason_code != ReasonCode::kDisconnectWithWillMessage;
    CloseNow();
  }

  void On(mqtt::Auth&) { CloseWith(ReasonCode::kProtocolError); }

  // Server-to-client packets sent by a client.
  template <typename T>
  void On(T&) {
    CloseWith(ReasonCode::kProtocolError);
  }

  // ------------------------------------------------------------------------------------------
  // Outbound messages

  uint16_t NextPacketId() {
    for (;;) {
      uint16_t id = next_packet_id_++;
      if (next_packet_id_ == 0) next_packet_id_ = 1;
      if (!inflight_.contains(id) && (!extra_ || !extra_->reserved_ids.contains(id))) return id;
    }
  }

  void Enqueue(OutMessage out, bool enforce_quota) {
    const MqttServerOptions& o = hub_->options;
    if (o.may_receive && !o.may_receive(client_id_, username_, out.message->topic())) return;
    if (out.from_log) P().unacked[out.message->partition()].insert(out.message->offset());
    if (queue_.empty() && (out.qos == QoS::kAtMostOnce || inflight_.size() < window_)) {
      SendOut(std::move(out), 0, false);
      return;
    }
    if (enforce_quota && queue_.size() >= hub_->options.max_queued_messages) {
      spdlog::info("mqtt {} ({}): slow client, {} messages queued; disconnecting", peer_,
                   client_id_, queue_.size());
      if (!out.shared_key.empty()) Redeliver(std::move(out));
      CloseWith(ReasonCode::kQuotaExceeded);
      return;
    }
    queue_.push_back(std::move(out));
  }

  // Sends one message now (the window has room when its QoS is above 0).
  void SendOut(OutMessage out, uint16_t packet_id, bool dup) {
    const v1::Message& m = *out.message;
    uint16_t new_alias = 0;
    mqtt::Publish p;
    p.qos = out.qos;
    p.retain = out.retain;
    p.dup = dup;
    p.topic = m.topic();
    p.payload = m.payload();
    if (version_ == Version::kV5) {
      mqtt::Properties& pr = p.properties;
      if (m.has_expiry_interval_s()) {
        // §3.3.2.3.3: the interval left.
        int64_t elapsed_s =
            m.publish_time_unix_ms() > 0 ? (NowUnixMs() - m.publish_time_unix_ms()) / 1000 : 0;
        int64_t left =
            static_cast<int64_t>(m.expiry_interval_s()) - std::max<int64_t>(elapsed_s, 0);
        if (m.expiry_interval_s() > 0 && left <= 0) {  // expired: not delivered
          Acknowledged(out);
          return;
        }
        pr.message_expiry_interval = static_cast<uint32_t>(std::max<int64_t>(left, 0));
      }
      if (!m.content_type().empty()) pr.content_type = m.content_type();
      if (m.payload_format() == v1::PAYLOAD_FORMAT_UTF8) pr.payload_format_indicator = 1;
      if (!m.response_topic().empty()) pr.response_topic = m.response_topic();
      if (!m.correlation_data().empty()) pr.correlation_data = m.correlation_data();
      for (const auto& u : m.user_properties()) {
        pr.user_properties.push_back({u.key(), u.value()});
      }
      pr.subscription_identifiers = out.subscription_ids;
      if (client_alias_max_ > 0) {
        // §3.3.2.3.4: the first message on a topic sets an alias, later ones use it alone.
        auto it = X().outbound_aliases.find(p.topic);
        if (it != X().outbound_aliases.end()) {
          pr.topic_alias = it->second;
          p.topic.clear();
        } else if (X().outbound_aliases.size() < client_alias_max_) {
          // Recorded only once the packet is sent (below): a dropped packet sets nothing.
          new_alias = static_cast<uint16_t>(X().outbound_aliases.size() + 1);
          pr.topic_alias = new_alias;
        }
      }
    }
    if (out.qos != QoS::kAtMostOnce) p.packet_id = packet_id != 0 ? packet_id : 1;
    if (client_max_packet_ != 0 && mqtt::EncodedSize(p, version_) > client_max_packet_) {
      Acknowledged(out);  // §3.1.2.11.4: discarded as if sent
      return;
    }
    if (new_alias != 0) X().outbound_aliases[m.topic()] = new_alias;
    if (out.qos != QoS::kAtMostOnce) {
      if (packet_id == 0) p.packet_id = NextPacketId();
      if (extra_) extra_->reserved_ids.erase(p.packet_id);
      OutState state =
          out.qos == QoS::kAtLeastOnce ? OutState::kAwaitAck : OutState::kAwaitRec;
      Send(p);
      inflight_[p.packet_id] = Inflight{std::move(out), state};
    } else {
      Send(p);
      Acknowledged(out);
    }
    hub_->messages_sent.fetch_add(1, std::memory_order_relaxed);
  }

  void DrainQueue() {
    while (!queue_.empty() && !closing_) {
      OutMessage& front = queue_.front();
      if (front.qos != QoS::kAtMostOnce && inflight_.size() >= window_) break;
      OutMessage out = std::move(front);
      queue_.pop_front();
      SendOut(std::move(out), 0, false);
    }
    PumpCatchup();
  }

  // ------------------------------------------------------------------------------------------
  // Catch-up of a resumed session: in-flight messages first, then each partition from its
  // cursor, a page at a time as the client takes them. Live deliveries of a partition being
  // caught up are dropped (it reads them itself) until the read reaches what live delivery has
  // passed.

  std::vector<std::string> OwnFilters() const {
    std::vector<std::string> out;
    for (const auto& [as_sent, s] : subscriptions_) {
      if (s.shared_key.empty()) out.push_back(s.filter);
    }
    return out;
  }

  void FinishCatchup(uint32_t partition, uint64_t through) {
    auto it = P().catchup.find(partition);
    if (it == P().catchup.end()) return;
    v1::PartitionPosition pos = it->second.pos;
    pos.set_offset(std::max(pos.offset(), through));
    P().skip_through[partition] = pos.offset();
    P().safe[partition] = pos;
    P().catchup.erase(it);
    P().catchup_order.erase(std::remove(P().catchup_order.begin(), P().catchup_order.end(), partition),
                         P().catchup_order.end());
  }

  void PumpCatchup() {
    if (!catchup_ready_ || fetch_in_flight_ || closing_ || !connected_) return;
    if (queue_.size() >= window_) return;  // paced by the client
    auto st = loop_state_;
    uint64_t sid = id_;
    if (!P().resend.empty()) {
      if (inflight_.size() >= window_) return;  // the client's Receive Maximum holds here too
      const v1::InflightMessage f = P().resend.front();
      v1::PartitionPosition after;
      after.set_partition(f.partition());
      after.set_epoch(f.epoch());
      after.set_offset(f.offset() == 0 ? 0 : f.offset() - 1);
      fetch_in_flight_ = true;
      uint16_t id = static_cast<uint16_t>(f.packet_id());
      uint8_t qos = static_cast<uint8_t>(f.qos());
      uint64_t offset = f.offset();
      bool started = false;
      hub_->WithCore([&](CoreApi* core) {
        if (core == nullptr) return;
        started = true;
        // MQTT-4.4.0-1: resent even if no subscription matches it any more.
        std::vector<std::string> any = OwnFilters();
        any.push_back("#");
        core->Fetch(f.partition(), after, std::move(any), 1,
                    [st, sid, id, qos, offset](absl::StatusOr<v1::FetchResult> r) {
                      RunOnSession(st, sid, [id, qos, offset, r = std::move(r)](
                                                MqttSession& s) mutable {
                        s.ResendFound(id, qos, offset, std::move(r));
                      });
                    });
      });
      if (!started) fetch_in_flight_ = false;
      return;
    }
    if (P().catchup_order.empty()) return;
    uint32_t p = P().catchup_order.front();
    std::vector<std::string> filters = OwnFilters();
    if (filters.empty()) {
      FinishCatchup(p, P().catchup[p].max_dropped);
      return PumpCatchup();
    }
    fetch_in_flight_ = true;
    v1::PartitionPosition after = P().catchup[p].pos;
    bool started = false;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      started = true;
      core->Fetch(p, after, std::move(filters), hub_->options.catchup_page,
                  [st, sid, p](absl::StatusOr<v1::FetchResult> r) {
                    RunOnSession(st, sid, [p, r = std::move(r)](MqttSession& s) mutable {
                      s.CatchupPage(p, std::move(r));
                    });
                  });
    });
    if (!started) fetch_in_flight_ = false;
  }

  // ------------------------------------------------------------------------------------------
  // Cursor commits of a persistent session

  // Partitions whose messages the subscriptions can match.
  std::set<uint32_t> RelevantPartitions(uint32_t partitions) const {
    std::set<uint32_t> out;
    for (const auto& [as_sent, s] : subscriptions_) {
      if (!s.shared_key.empty()) continue;
      if (s.filter.find_first_of("+#") != std::string::npos) {
        for (uint32_t p = 0; p < partitions; ++p) out.insert(p);
        return out;
      }
      out.insert(PartitionFor(s.filter, partitions));
    }
    return out;
  }

  // Every message at or before a partition's position that the subscriptions match has been
  // delivered and, at QoS > 0, acknowledged (or is in flight and recorded as such at close).
  std::vector<v1::PartitionPosition> Cursor() const {
    std::map<uint32_t, v1::PartitionPosition> pos;
    for (const auto& [p, s] : P().safe) pos[p] = s;
    for (const auto& [p, off] : P().processed) {
      v1::PartitionPosition& x = pos[p];
      x.set_partition(p);
      x.set_offset(std::max(x.offset(), off));
    }
    for (const auto& [p, c] : P().catchup) pos[p] = c.pos;
    for (const auto& [p, offsets] : P().unacked) {
      if (offsets.empty()) continue;
      auto it = pos.find(p);
      if (it == pos.end()) continue;
      it->second.set_offset(std::min(it->second.offset(), *offsets.begin() - 1));
    }
    std::vector<v1::PartitionPosition> out;
    for (auto& [p, x] : pos) {
      x.set_partition(p);
      out.push_back(x);
    }
    return out;
  }

  void StartCommit() {
    if (closing_ || !persistent_) return;
    std::map<uint32_t, v1::PartitionPosition> snapshot;
    std::vector<uint32_t> unknown;
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      for (uint32_t p : RelevantPartitions(core->partitions())) {
        if (P().catchup.count(p)) continue;
        if (auto live = core->LivePosition(p)) {
          snapshot[p] = *live;
        } else if (!P().safe.count(p) && !P().processed.count(p) && !P().asked_end.count(p)) {
          unknown.push_back(p);
        }
      }
      // A partition this edge has not read yet: its end, from the core, is where the session
      // starts being owed its messages.
      auto st = loop_state_;
      uint64_t sid = id_;
      for (uint32_t p : unknown) {
        P().asked_end.insert(p);
        core->Fetch(p, v1::PartitionPosition(), OwnFilters(), 1,
                    [st, sid, p](absl::StatusOr<v1::FetchResult> r) {
                      if (!r.ok()) return;
                      v1::PartitionPosition end;
                      end.set_partition(p);
                      end.set_epoch(r->epoch());
                      end.set_offset(r->last_offset());
                      RunOnSession(st, sid, [end](MqttSession& s) {
                        s.LiveSnapshot({{end.partition(), end}});
                      });
                    });
      }
    });
    // Deliveries posted before the snapshot are ahead of this task on the loop.
    RunOnSession(loop_state_, id_, [snapshot = std::move(snapshot)](MqttSession& s) mutable {
      s.LiveSnapshot(std::move(snapshot));
    });
  }

  void CommitCursor() {
    v1::SessionUpdate update;
    for (const auto& pos : Cursor()) {
      auto it = P().committed.find(pos.partition());
      if (it != P().committed.end() && it->second.epoch() == pos.epoch() &&
          it->second.offset() >= pos.offset()) {
        continue;
      }
      P().committed[pos.partition()] = pos;
      *update.add_commit_positions() = pos;
    }
    auto now = std::chrono::steady_clock::now();
    // An empty update now and then finds out whether another edge took the session over.
    if (update.commit_positions_size() == 0 && now - P().last_update < std::chrono::seconds(5)) {
      return;
    }
    P().last_update = now;
    SendUpdate(std::move(update));
  }

  // The session's final state, written when the connection ends (or is taken over on this
  // edge: then `done` runs once it is written, and the session is not closed, since the new
  // connection opens it at once).
  void CloseCoreSession(absl::AnyInvocable<void()> done = nullptr) {
    v1::SessionUpdate update;
    update.set_client_id(client_id_);
    update.set_owner_epoch(epoch_);
    for (const auto& pos : Cursor()) *update.add_commit_positions() = pos;
    for (const auto& [dir, id] : P().stored_inflight) {
      v1::InflightRef* r = update.add_remove_inflight();
      r->set_direction(dir);
      r->set_packet_id(id);
    }
    // Retained messages the session owes already (sent and unacknowledged, or stored and not
    // resent yet), by the position they were published at.
    std::set<std::pair<uint32_t, uint64_t>> owed_retained;
    for (const auto& [id, f] : inflight_) {
      if (f.out.as_retained && f.out.message) {
        owed_retained.insert({f.out.message->partition(), f.out.message->offset()});
      }
      v1::InflightMessage* m = nullptr;
      if (f.state == OutState::kAwaitComp) {
        m = update.add_put_inflight();
        m->set_state(v1::INFLIGHT_STATE_AWAITING_COMP);
      } else if (f.out.from_log && f.out.message) {
        m = update.add_put_inflight();
        m->set_state(v1::INFLIGHT_STATE_AWAITING_ACK);
        m->set_partition(f.out.message->partition());
        m->set_offset(f.out.message->offset());
        if (auto it = P().safe.find(f.out.message->partition()); it != P().safe.end()) {
          m->set_epoch(it->second.epoch());
        }
      } else if (f.out.as_retained && f.out.message) {
        // MQTT-4.4.0-1: resent on reconnection like any unacknowledged PUBLISH.
        m = update.add_put_inflight();
        m->set_state(v1::INFLIGHT_STATE_AWAITING_ACK);
        m->set_partition(f.out.message->partition());
        m->set_offset(f.out.message->offset());
        m->set_epoch(f.out.retained_epoch);
        m->set_retained(true);
      }
      if (m == nullptr) continue;
      m->set_direction(v1::INFLIGHT_DIRECTION_OUTBOUND);
      m->set_packet_id(id);
      m->set_qos(static_cast<v1::QoS>(f.out.qos));
    }
    // Entries of the stored state not resent yet stay owed, with their packet ids (before what
    // this connection queued: they go out first on reconnection).
    if (ps_) {
      ps_->resend.ForEach([&](const v1::InflightMessage& f) {
        *update.add_put_inflight() = f;
        if (f.retained()) owed_retained.insert({f.partition(), f.offset()});
      });
    }
    // Retained QoS 1 and 2 messages sent because of a new subscription but still queued behind
    // the client's Receive Maximum are session state too (MQTT 5.0 §4.1: "QoS 1 and QoS 2
    // messages pending transmission to the Client"): owed under packet ids reserved now, sent
    // on reconnection as first deliveries. One entry per retained message (a re-SUBSCRIBE
    // queues the same ones again), at most mqtt.max_queued_messages of them, and never the last
    // free packet ids. Log messages still queued need no entry: the cursor does not pass them.
    size_t reserved = inflight_.size() + (extra_ ? extra_->reserved_ids.size() : 0);
    size_t stored = 0;
    for (size_t i = 0; i < queue_.size(); ++i) {
      const OutMessage& q = queue_[i];
      if (!q.as_retained || !q.message || q.qos == QoS::kAtMostOnce) continue;
      if (stored >= hub_->options.max_queued_messages || reserved + 1024 >= 65535) {
        spdlog::info("mqtt {} ({}): {} retained messages still queued not kept in the session",
                     peer_, client_id_, queue_.size() - i);
        break;
      }
      if (!owed_retained.insert({q.message->partition(), q.message->offset()}).second) continue;
      uint16_t id = NextPacketId();
      X().reserved_ids.insert(id);
      ++reserved;
      ++stored;
      v1::InflightMessage* m = update.add_put_inflight();
      m->set_direction(v1::INFLIGHT_DIRECTION_OUTBOUND);
      m->set_packet_id(id);
      m->set_state(v1::INFLIGHT_STATE_AWAITING_ACK);
      m->set_qos(static_cast<v1::QoS>(q.qos));
      m->set_partition(q.message->partition());
      m->set_offset(q.message->offset());
      m->set_epoch(q.retained_epoch);
      m->set_retained(true);
      m->set_queued(true);
    }
    for (uint16_t id : extra_ ? extra_->awaiting_rel : std::set<uint16_t>{}) {
      v1::InflightMessage* m = update.add_put_inflight();
      m->set_direction(v1::INFLIGHT_DIRECTION_INBOUND);
      m->set_packet_id(id);
      m->set_state(v1::INFLIGHT_STATE_AWAITING_REL);
      m->set_qos(v1::QOS_EXACTLY_ONCE);
    }
    v1::CloseSessionRequest close;
    close.set_client_id(client_id_);
    close.set_owner_epoch(epoch_);
    close.set_publish_will(has_will_ && !clean_disconnect_);
    if (disconnect_expiry_) close.set_expiry_interval_s(*disconnect_expiry_);
    bool take_over = taken_over_;
    std::shared_ptr<Hub> hub = hub_;
    auto shared_done = std::make_shared<absl::AnyInvocable<void()>>(std::move(done));
    bool sent = false;
    hub->pending_closes.fetch_add(1);
    hub_->WithCore([&](CoreApi* core) {
      if (core == nullptr) return;
      sent = true;
      core->UpdateSession(std::move(update), [hub, close = std::move(close), take_over,
                                              shared_done](const absl::Status& s) mutable {
        if (!s.ok() && !absl::IsFailedPrecondition(s)) {
          spdlog::warn("mqtt: final session update of {} failed: {}", close.client_id(), s);
        }
        if (*shared_done) (*shared_done)();
        // After a takeover the new owner's OpenSession decides about the will.
        if (take_over || absl::IsFailedPrecondition(s) || absl::IsNotFound(s)) {
          hub->pending_closes.fetch_sub(1);
          return;
        }
        bool closing = false;
        hub->WithCore([&](CoreApi* core) {
          if (core == nullptr) return;
          closing = true;
          std::string id = close.client_id();
          core->CloseSession(std::move(close), [hub, id](const absl::Status& cs) {
            if (!cs.ok() && !absl::IsFailedPrecondition(cs)) {
              spdlog::warn("mqtt: closing session {} failed: {}", id, cs);
            }
            hub->pending_closes.fetch_sub(1);
          });
        });
        if (!closing) hub->pending_closes.fetch_sub(1);
      });
    });
    if (!sent) {
      hub->pending_closes.fetch_sub(1);
      if (*shared_done) (*shared_done)();
    }
  }

  void Cleanup() {
    if (cleaned_up_) return;
    cleaned_up_ = true;
    closing_ = true;
    keep_alive_timer_.reset();
    connect_timer_.reset();
    commit_timer_.reset();
    retry_timer_.reset();
    takeover_timer_.reset();
    loop_state_->sessions.erase(id_);
    if (connected_) hub_->connected.fetch_sub(1);
    for (const auto& [f, s] : subscriptions_) Index(s, /*insert=*/false);
    {
      std::lock_guard<std::mutex> l(hub_->mu);
      if (registered_) {
        auto it = hub_->clients.find(client_id_);
        if (it != hub_->clients.end() && it->second.session_id == id_) hub_->clients.erase(it);
      }
    }
    for (const auto& [f, s] : subscriptions_) RemoveCoreFilter(CoreFilter(s));
    hub_->subscriptions.fetch_sub(subscriptions_.size(), std::memory_order_relaxed);
    // What a shared subscription gave this session and it did not acknowledge goes to another
    // member (§4.8.2).
    for (auto& [id, f] : inflight_) {
      if (!f.out.shared_key.empty() && f.out.message && f.state != OutState::kAwaitComp) {
        Redeliver(std::move(f.out));
      }
    }
    queue_.ForEach([this](OutMessage& out) {
      if (!out.shared_key.empty()) Redeliver(std::move(out));
    });
    if (persistent_ && !core_closed_) {
      core_closed_ = true;
      CloseCoreSession();
    }
    subscriptions_.clear();
    hub_->live_sessions.fetch_sub(1);
  }

  std::shared_ptr<Hub> hub_;
  std::shared_ptr<LoopState> loop_state_;
  net::Connection* conn_;
  std::unique_ptr<MqttServer::Transport> transport_;
  const std::string peer_;
  const uint64_t id_;
  mqtt::Decoder decoder_;
  Version version_ = Version::kV311;
  bool connecting_ = false;  // CONNECT received, CONNACK not yet sent
  bool connected_ = false;
  bool closing_ = false;
  bool cleaned_up_ = false;
  bool registered_ = false;
  bool taken_over_ = false;
  bool core_closed_ = false;        // the final state was written (CloseCoreSession)
  bool session_requested_ = false;  // OpenCoreSession ran
  std::unique_ptr<net::Timer> takeover_timer_;
  bool assigned_id_ = false;
  bool clean_disconnect_ = false;
  bool has_will_ = false;
  bool corked_ = false;
  bool in_read_ = false;
  std::string out_buf_;
  std::vector<v1::Message> qos0_batch_;
  std::unique_ptr<mqtt::Connect> pending_connect_;
  LazyDeque<mqtt::Packet> deferred_;
  std::optional<mqtt::Error> deferred_error_;
  std::string client_id_;
  std::optional<std::string> username_;
  std::unique_ptr<net::Timer> connect_timer_;
  std::unique_ptr<net::Timer> keep_alive_timer_;
  std::unique_ptr<net::Timer> commit_timer_;
  std::unique_ptr<net::Timer> retry_timer_;
  std::chrono::milliseconds keep_alive_timeout_{0};
  std::map<std::string, SubState> subscriptions_;  // by filter as sent
  // Session in the core.
  bool persistent_ = false;
  uint64_t epoch_ = 0;
  uint32_t expiry_s_ = 0;
  bool expiry_capped_ = false;
  std::optional<uint32_t> disconnect_expiry_;
  // Catch-up.
  size_t pending_filters_ = 0;
  bool catchup_ready_ = false;
  bool fetch_in_flight_ = false;
  // Cursor and catch-up state of a session kept in the core; allocated when first used.
  struct Persistent {
    std::vector<std::pair<v1::InflightDirection, uint32_t>> stored_inflight;
    std::map<uint32_t, v1::PartitionPosition> safe;
    std::map<uint32_t, uint64_t> processed;
    std::map<uint32_t, std::multiset<uint64_t>> unacked;
    std::map<uint32_t, v1::PartitionPosition> committed;
    std::set<uint32_t> asked_end;  // partitions whose end was asked from the core
    std::chrono::steady_clock::time_point last_update = std::chrono::steady_clock::now();
    std::map<uint32_t, Catchup> catchup;
    std::vector<uint32_t> catchup_order;
    std::map<uint32_t, uint64_t> skip_through;
    LazyDeque<v1::InflightMessage> resend;
    std::set<std::pair<uint32_t, uint64_t>> resent;
  };
  std::unique_ptr<Persistent> ps_;
  // QoS 2 and topic alias state; allocated when first used (an idle connection has none).
  struct Extra {
    std::set<uint16_t> awaiting_rel;        // inbound QoS 2: PUBREC sent, PUBREL awaited
    std::set<uint16_t> inbound_publishing;  // inbound QoS 2: being committed
    std::map<uint16_t, std::string> inbound_aliases;
    std::map<std::string, uint16_t> outbound_aliases;
    std::set<uint16_t> reserved_ids;  // in flight in the stored session, being resent
    // Retained lookups of SUBSCRIBEs under way, each by its start, and meanwhile the log
    // messages (partition, offset) this session received live or from its catch-up, numbered
    // from seen_base in arrival order: a lookup does not send again as retained what arrived
    // after it began. What no lookup under way needs is dropped.
    std::multiset<uint64_t> lookups;
    uint64_t seen_base = 0;
    std::deque<std::pair<uint32_t, uint64_t>> seen_order;
    std::map<std::pair<uint32_t, uint64_t>, uint64_t> seen;
  };
  std::unique_ptr<Extra> extra_;
  Extra& X() {
    if (!extra_) extra_ = std::make_unique<Extra>();
    return *extra_;
  }
  Persistent& P() {
    if (!ps_) ps_ = std::make_unique<Persistent>();
    return *ps_;
  }
  const Persistent& P() const {
    static const Persistent kEmpty;
    return ps_ ? *ps_ : kEmpty;
  }
  // Outbound.
  size_t window_ = 64;
  uint32_t client_max_packet_ = 0;  // 0: no limit
  uint16_t client_alias_max_ = 0;
  uint16_t next_packet_id_ = 1;
  std::map<uint16_t, Inflight> inflight_;
  LazyDeque<OutMessage> queue_;
  // Inbound.
  LazyDeque<InboundAck> inbound_acks_;
  uint64_t inbound_base_ = 0;
};

void RunOnSession(const std::shared_ptr<LoopState>& st, uint64_t sid,
                  absl::AnyInvocable<void(MqttSession&)> fn) {
  st->loop->Post([st, sid, fn = std::move(fn)]() mutable {
    auto it = st->sessions.find(sid);
    if (it != st->sessions.end()) fn(*it->second);
  });
}

void PostDelivery(const std::shared_ptr<LoopState>& st, Delivery d) {
  st->loop->Post([st, d = std::move(d)]() mutable {
    auto it = st->sessions.find(d.session_id);
    if (it != st->sessions.end()) it->second->Deliver(std::move(d.out));
  });
}

// MQTT over a plain TCP (or TLS) connection.
class TcpTransport final : public MqttServer::Transport {
 public:
  explicit TcpTransport(net::Connection& c) : conn_(c) {}
  bool Send(std::string bytes) override { return conn_.Send(std::move(bytes)); }
  void Close() override { conn_.Close(); }

 private:
  net::Connection& conn_;
};

class TcpHandler final : public net::ConnectionHandler {
 public:
  explicit TcpHandler(std::unique_ptr<MqttServer::Endpoint> session)
      : session_(std::move(session)) {}
  void OnData(net::Connection&, std::string_view data) override { session_->OnBytes(data); }
  void OnClose(net::Connection&, const absl::Status& reason) override {
    session_->OnClosed(reason);
  }

 private:
  std::unique_ptr<MqttServer::Endpoint> session_;
};

}  // namespace


MqttServer::MqttServer(MqttServerOptions options, CoreApi* core)
    : options_(std::move(options)), hub_(std::make_shared<Hub>()) {
  hub_->options = options_;
  std::unique_lock<std::shared_mutex> l(hub_->core_mu);
  hub_->core = core;
}

MqttServer::~MqttServer() { Stop(); }

std::unique_ptr<MqttServer::Endpoint> MqttServer::Attach(
    net::Connection& conn, std::unique_ptr<Transport> transport) {
  if (hub_->stopped.load()) return nullptr;
  auto it = hub_->loops.find(&conn.loop());
  if (it == hub_->loops.end()) return nullptr;
  return std::make_unique<MqttSession>(hub_, it->second, conn, std::move(transport));
}

absl::Status MqttServer::Start(net::LoopGroup& loops) {
  loops_ = &loops;
  for (size_t i = 0; i < loops.size(); ++i) {
    auto st = std::make_shared<LoopState>();
    st->loop = &loops.loop(i);
    hub_->loops[&loops.loop(i)] = st;
  }
  hub_->auth_thread = std::thread([hub = hub_.get()] {
    SetThreadName("mqtt-auth");
    hub->AuthLoop();
  });
  auto factory = [this](net::Connection& conn) -> std::unique_ptr<net::ConnectionHandler> {
    auto session = Attach(conn, std::make_unique<TcpTransport>(conn));
    if (!session) return nullptr;
    return std::make_unique<TcpHandler>(std::move(session));
  };
  net::ListenerOptions lo;
  lo.max_connections = options_.max_connections;
  if (!options_.listen.empty()) {
    auto address = net::SocketAddress::Parse(options_.listen);
    if (!address.ok()) return address.status();
    auto listener = net::ListenerGroup::Listen(loops, *address, factory, lo);
    if (!listener.ok()) return listener.status();
    listener_ = std::move(*listener);
    spdlog::info("mqtt listening on {}", listener_->address().ToString());
  }
  if (!options_.tls_listen.empty() && options_.tls) {
    auto address = net::SocketAddress::Parse(options_.tls_listen);
    if (!address.ok()) return address.status();
    net::ListenerOptions tlo = lo;
    tlo.tls = options_.tls;
    auto listener = net::ListenerGroup::Listen(loops, *address, factory, tlo);
    if (!listener.ok()) return listener.status();
    tls_listener_ = std::move(*listener);
    spdlog::info("mqtt (TLS) listening on {}", tls_listener_->address().ToString());
  }
  if (options_.sys_interval.count() > 0) {
    // The timer lives on loop 0; Stop() destroys it there before the server goes away.
    sys_timer_ = std::make_shared<std::unique_ptr<net::Timer>>();
    net::EventLoop& loop0 = loops.loop(0);
    loop0.Post([this, holder = sys_timer_, &loop0] {
      if (hub_->stopped.load()) return;
      *holder = std::make_unique<net::Timer>(loop0, [this] { PublishSys(); });
      (*holder)->Start(std::chrono::milliseconds(1), options_.sys_interval);
    });
  }
  return absl::OkStatus();
}

void MqttServer::PublishSys() {
  if (hub_->stopped.load()) return;
  auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now() - hub_->started)
                    .count();
  uint64_t bytes_in = 0, bytes_out = 0;
  for (const auto* l : {listener_.get(), tls_listener_.get()}) {
    if (l == nullptr) continue;
    bytes_in += l->shared_stats()->bytes_in.load();
    bytes_out += l->shared_stats()->bytes_out.load();
  }
  std::map<std::string, std::string> values = {
      {"$SYS/broker/version", StrCat("herald ", kHeraldVersion)},
      {"$SYS/broker/uptime", StrCat(uptime, " seconds")},
      {"$SYS/broker/clients/connected", StrCat(hub_->connected.load())},
      {"$SYS/broker/messages/received", StrCat(hub_->messages_received.load())},
      {"$SYS/broker/messages/sent", StrCat(hub_->messages_sent.load())},
      {"$SYS/broker/subscriptions/count", StrCat(hub_->subscriptions.load())},
      {"$SYS/broker/bytes/received", StrCat(bytes_in)},
      {"$SYS/broker/bytes/sent", StrCat(bytes_out)},
  };
  std::vector<v1::Message> messages;
  {
    std::lock_guard<std::mutex> l(hub_->mu);
    hub_->sys_values = values;
  }
  for (auto& [topic, payload] : values) {
    v1::Message m;
    m.set_topic(topic);
    m.set_payload(payload);
    m.set_retain(true);
    messages.push_back(std::move(m));
  }
  std::vector<v1::Message*> ptrs;
  for (auto& m : messages) ptrs.push_back(&m);
  Deliver(ptrs);
}

void MqttServer::Stop() {
  if (hub_->stopped.exchange(true)) return;
  if (listener_) listener_->Close();
  if (tls_listener_) tls_listener_->Close();
  if (loops_ != nullptr && sys_timer_) {
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> f = done->get_future();
    if (loops_->loop(0).Post([t = sys_timer_, done] {
          t->reset();
          done->set_value();
        })) {
      f.wait_for(std::chrono::seconds(2));
    }
  }
  for (auto& [loop, st] : hub_->loops) {
    loop->Post([st] {
      std::vector<MqttSession*> all;
      for (auto& [id, s] : st->sessions) all.push_back(s);
      for (MqttSession* s : all) s->ServerStopping();
    });
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((hub_->live_sessions.load() > 0 || hub_->pending_closes.load() > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  {
    std::lock_guard<std::mutex> l(hub_->auth_mu);
    hub_->auth_stop = true;
    hub_->auth_jobs.clear();
    hub_->auth_cv.notify_all();
  }
  if (hub_->auth_thread.joinable()) hub_->auth_thread.join();
  // Sessions still open from here on no longer reach the core.
  std::unique_lock<std::shared_mutex> l(hub_->core_mu);
  hub_->core = nullptr;
}

void MqttServer::Deliver(const std::vector<v1::Message*>& messages) {
  std::map<LoopState*, std::vector<Delivery>> by_loop;
  {
    std::lock_guard<std::mutex> l(hub_->mu);
    struct Target {
      uint8_t qos = 0;
      bool retain = false;
      std::vector<uint32_t> ids;
    };
    std::map<std::pair<LoopState*, uint64_t>, Target> targets;
    std::vector<SharedGroup*> groups;
    for (v1::Message* m : messages) {
      targets.clear();
      groups.clear();
      // The core names the shared subscriptions that get this message on this edge.
      for (const std::string& key : m->shared_subscriptions()) {
        auto g = hub_->shared_groups.find(key);
        if (g != hub_->shared_groups.end()) groups.push_back(g->second.get());
      }
      hub_->trie.Match(m->topic(), [&](const SubRef& r) {
        if (r.no_local && *r.client_id == m->publisher_client_id()) return;  // §3.8.3.1
        Target& t = targets[{r.loop_state, r.session_id}];
        t.qos = std::max(t.qos, r.qos);
        if (r.retain_as_published && m->retain()) t.retain = true;  // §3.8.3.1
        if (r.subscription_id != 0) t.ids.push_back(r.subscription_id);
      });
      if (targets.empty() && groups.empty()) continue;
      auto shared = std::make_shared<const v1::Message>(std::move(*m));
      uint8_t mq = static_cast<uint8_t>(shared->qos());
      for (auto& [key, t] : targets) {
        OutMessage out;
        out.qos = static_cast<QoS>(std::min(t.qos, mq));
        out.retain = t.retain;
        out.subscription_ids = std::move(t.ids);
        out.message = shared;
        by_loop[key.first].push_back(Delivery{key.second, std::move(out)});
      }
      for (SharedGroup* g : groups) {
        if (g->members.empty()) continue;
        const SubRef& r = g->members[g->next++ % g->members.size()];
        OutMessage out;
        out.qos = static_cast<QoS>(std::min(r.qos, mq));
        out.retain = r.retain_as_published && shared->retain();
        if (r.subscription_id != 0) out.subscription_ids.push_back(r.subscription_id);
        out.message = shared;
        out.shared_key = g->key;
        by_loop[r.loop_state].push_back(Delivery{r.session_id, std::move(out)});
      }
    }
  }
  for (auto& [raw, deliveries] : by_loop) {
    std::shared_ptr<LoopState> st = hub_->StateOf(raw);
    if (!st) continue;
    st->loop->Post([st, d = std::move(deliveries)]() mutable {
      std::vector<MqttSession*> corked;
      for (auto& one : d) {
        auto it = st->sessions.find(one.session_id);
        if (it == st->sessions.end()) continue;
        MqttSession* s = it->second;
        if (!s->corked()) {
          s->Cork();
          corked.push_back(s);
        }
        s->Deliver(std::move(one.out));
      }
      // A session closed meanwhile stays in memory until its connection's close callback.
      for (MqttSession* s : corked) {
        if (s->corked()) s->Uncork();
      }
    });
  }
}

const net::SocketAddress& MqttServer::address() const { return listener_->address(); }
const net::SocketAddress& MqttServer::tls_address() const { return tls_listener_->address(); }

std::shared_ptr<const net::ConnectionStats> MqttServer::stats() const {
  return listener_ ? listener_->shared_stats() : nullptr;
}

int64_t MqttServer::connected_clients() const { return hub_->connected.load(); }

}  // namespace herald::edge
