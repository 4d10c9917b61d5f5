// MQTT persistent sessions in the partition state machine: apply of the session commands, the
// in-memory deadline index and the will outbox. See broker.proto "Sessions" for the contract and
// docs/core.md "Sessions" for the design.
#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "libs/broker/partition_state_machine.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/storage/keys.h"

namespace herald::broker {

using storage::Family;

namespace {

void SetError(v1::ErrorInfo* e, v1::ErrorCode code, std::string message) {
  e->set_code(code);
  e->set_message(std::move(message));
}

int64_t ExpiryDeadline(const v1::Session& s) {
  if (s.expiry_interval_s() == kSessionNeverExpires) return 0;
  return s.disconnected_time_unix_ms() + int64_t{s.expiry_interval_s()} * 1000;
}

}  // namespace

uint64_t WillProducerId(std::string_view client_id, uint64_t owner_epoch) {
  uint64_t id = StableHash64(StrCat("will/", client_id, "/", owner_epoch));
  return id != 0 ? id : 1;
}

absl::Status PartitionStateMachine::LoadSessions() {
  auto it = engine_.NewIterator(Family::kPartition);
  const std::string sessions = Key('c');
  for (it->Seek(sessions); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (!key.starts_with(sessions)) break;
    v1::SessionRecord rec;
    if (!rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(StrCat("partition ", partition_, ": session record is corrupt"));
    }
    IndexSession(std::string(key.substr(sessions.size())), &rec);
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "session scan");
  const std::string wills = Key('w');
  for (it->Seek(wills); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (!key.starts_with(wills)) break;
    v1::WillOutboxRecord rec;
    if (!rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(StrCat("partition ", partition_, ": will record is corrupt"));
    }
    will_outbox_[rec.will_id()] = std::move(rec);
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "will scan");
  return absl::OkStatus();
}

void PartitionStateMachine::Flushed() { staged_sessions_.clear(); }

absl::StatusOr<std::optional<v1::SessionRecord>> PartitionStateMachine::LoadSession(
    std::string_view client_id) const {
  auto staged = staged_sessions_.find(std::string(client_id));
  if (staged != staged_sessions_.end()) return staged->second;
  if (sessions_.count(std::string(client_id)) == 0) return std::optional<v1::SessionRecord>();
  auto v = engine_.Get(Family::kPartition, SessionKey(client_id));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<v1::SessionRecord>();
  v1::SessionRecord rec;
  if (!rec.ParseFromString(**v)) {
    return absl::DataLossError(StrCat("partition ", partition_, ": session record is corrupt"));
  }
  return std::optional<v1::SessionRecord>(std::move(rec));
}

absl::StatusOr<std::optional<v1::Session>> PartitionStateMachine::GetSession(
    std::string_view client_id) const {
  auto rec = LoadSession(client_id);
  if (!rec.ok()) return rec.status();
  if (!rec->has_value()) return std::optional<v1::Session>();
  return std::optional<v1::Session>(std::move(*(*rec)->mutable_session()));
}

void PartitionStateMachine::IndexSession(const std::string& client_id,
                                         const v1::SessionRecord* rec) {
  auto it = sessions_.find(client_id);
  if (it != sessions_.end() && it->second.deadline != 0) {
    session_deadlines_.erase({it->second.deadline, client_id});
  }
  if (rec == nullptr) {
    if (it != sessions_.end()) sessions_.erase(it);
    return;
  }
  const v1::Session& s = rec->session();
  SessionMeta meta;
  meta.owner_epoch = s.owner_epoch();
  meta.connected = !s.owner_edge_id().empty();
  if (!meta.connected) {
    // The session's end comes first on a tie: it publishes the will as well.
    int64_t expiry = ExpiryDeadline(s);
    int64_t will = rec->will_due_unix_ms();
    if (expiry != 0 && (will == 0 || expiry <= will)) {
      meta.deadline = expiry;
      meta.kind = v1::SessionTimerCommand::KIND_EXPIRED;
    } else if (will != 0) {
      meta.deadline = will;
      meta.kind = v1::SessionTimerCommand::KIND_WILL_DUE;
    }
  }
  if (meta.deadline != 0) session_deadlines_.insert({meta.deadline, client_id});
  sessions_[client_id] = meta;
}

std::vector<SessionTimer> PartitionStateMachine::DueSessionTimers(int64_t now_unix_ms,
                                                                  size_t max) const {
  std::vector<SessionTimer> out;
  for (const auto& [deadline, client_id] : session_deadlines_) {
    if (deadline > now_unix_ms || out.size() >= max) break;
    const SessionMeta& meta = sessions_.at(client_id);
    out.push_back(SessionTimer{client_id, meta.owner_epoch, meta.kind});
  }
  return out;
}

void PartitionStateMachine::ForEachConnectedSession(
    const std::function<void(const std::string&, uint64_t)>& fn) const {
  for (const auto& [client_id, meta] : sessions_) {
    if (meta.connected) fn(client_id, meta.owner_epoch);
  }
}

bool PartitionStateMachine::SessionConnected(const std::string& client_id,
                                             uint64_t owner_epoch) const {
  auto it = sessions_.find(client_id);
  return it != sessions_.end() && it->second.connected && it->second.owner_epoch == owner_epoch;
}

void PartitionStateMachine::PutSession(const v1::SessionRecord& rec, rocksdb::WriteBatch* batch) {
  const std::string& client_id = rec.session().client_id();
  if (sessions_.count(client_id) == 0) state_.set_session_count(state_.session_count() + 1);
  batch->Put(engine_.handle(Family::kPartition), SessionKey(client_id), rec.SerializeAsString());
  staged_sessions_[client_id] = rec;
  IndexSession(client_id, &rec);
}

void PartitionStateMachine::DeleteSession(const std::string& client_id,
                                          rocksdb::WriteBatch* batch) {
  if (sessions_.count(client_id) != 0) {
    state_.set_session_count(state_.session_count() -
                             std::min<uint64_t>(state_.session_count(), 1));
  }
  batch->Delete(engine_.handle(Family::kPartition), SessionKey(client_id));
  staged_sessions_[client_id] = std::nullopt;
  IndexSession(client_id, nullptr);
}

void PartitionStateMachine::QueueWill(v1::SessionRecord& rec, rocksdb::WriteBatch* batch) {
  v1::Session& s = *rec.mutable_session();
  rec.set_will_due_unix_ms(0);
  if (!s.has_will()) return;
  v1::WillOutboxRecord w;
  w.set_will_id(s.owner_epoch());
  w.set_client_id(s.client_id());
  v1::Message* m = w.mutable_message();
  *m = s.will().message();
  m->set_producer_id(WillProducerId(s.client_id(), s.owner_epoch()));
  m->set_sequence(1);
  m->clear_partition();
  m->clear_offset();
  m->clear_publish_time_unix_ms();
  s.clear_will();
  batch->Put(engine_.handle(Family::kPartition), WillKey(w.will_id()), w.SerializeAsString());
  will_outbox_[w.will_id()] = std::move(w);
}

bool PartitionStateMachine::Disconnect(v1::SessionRecord& rec, int64_t now, bool publish_will,
                                       std::optional<uint32_t> expiry_interval_s,
                                       rocksdb::WriteBatch* batch) {
  v1::Session& s = *rec.mutable_session();
  s.clear_owner_edge_id();
  if (s.disconnected_time_unix_ms() == 0) s.set_disconnected_time_unix_ms(now);
  if (expiry_interval_s.has_value()) s.set_expiry_interval_s(*expiry_interval_s);
  if (!publish_will) {
    s.clear_will();
    rec.set_will_due_unix_ms(0);
  } else if (s.has_will() && rec.will_due_unix_ms() == 0) {
    // MQTT 5 §3.1.2.5: after the will delay, or at the session's end if that comes first.
    rec.set_will_due_unix_ms(s.disconnected_time_unix_ms() +
                             int64_t{s.will().delay_interval_s()} * 1000);
    if (s.will().delay_interval_s() == 0) QueueWill(rec, batch);
  }
  if (s.expiry_interval_s() == 0) {
    QueueWill(rec, batch);
    DeleteSession(s.client_id(), batch);
    return true;
  }
  PutSession(rec, batch);
  return false;
}

absl::Status PartitionStateMachine::ApplyOpenSession(const v1::OpenSessionRequest& req, int64_t now,
                                                     rocksdb::WriteBatch* batch,
                                                     ApplyResult* result) {
  auto existing = LoadSession(req.client_id());
  if (!existing.ok()) return existing.status();
  const uint64_t epoch = state_.last_owner_epoch() + 1;
  state_.set_last_owner_epoch(epoch);
  v1::OpenSessionResponse& out = result->open_session.emplace();
  v1::SessionRecord rec;
  bool present = false;
  if (existing->has_value()) {
    v1::SessionRecord& old = **existing;
    const v1::Session& s = old.session();
    const bool connected = !s.owner_edge_id().empty();
    const int64_t expiry = connected ? 0 : ExpiryDeadline(s);
    const bool ended = req.clean_start() || (expiry != 0 && expiry <= now);
    if (ended) {
      // The old session ends: a will of its connection (taken over now, or scheduled) is
      // published (MQTT 5 §3.1.2.4, §3.1.2.5).
      if (s.has_will() && (connected || old.will_due_unix_ms() != 0)) QueueWill(old, batch);
    } else {
      // Resumed or taken over: the new connection arrived before the will delay ran out, so
      // the previous connection's will is published only when its delay is 0 (§3.1.3.2.2).
      if (connected && s.has_will() && s.will().delay_interval_s() == 0) QueueWill(old, batch);
      rec = std::move(old);
      present = true;
    }
  }
  v1::Session& s = *rec.mutable_session();
  if (!present) {
    s.set_client_id(req.client_id());
    s.set_created_time_unix_ms(now);
  }
  s.set_owner_epoch(epoch);
  s.set_owner_edge_id(req.edge_id());
  s.set_expiry_interval_s(req.expiry_interval_s());
  s.set_disconnected_time_unix_ms(0);
  if (req.has_will()) {
    *s.mutable_will() = req.will();
  } else {
    s.clear_will();
  }
  rec.set_will_due_unix_ms(0);
  PutSession(rec, batch);
  out.set_session_present(present);
  *out.mutable_session() = s;
  return absl::OkStatus();
}

absl::Status PartitionStateMachine::ApplyUpdateSession(const v1::SessionUpdate& u,
                                                       rocksdb::WriteBatch* batch,
                                                       v1::SessionUpdateResult* result) {
  auto loaded = LoadSession(u.client_id());
  if (!loaded.ok()) return loaded.status();
  if (!loaded->has_value()) {
    SetError(result->mutable_error(), v1::ERROR_CODE_SESSION_NOT_FOUND,
             StrCat("no session for client '", u.client_id(), "'"));
    return absl::OkStatus();
  }
  v1::SessionRecord& rec = **loaded;
  v1::Session& s = *rec.mutable_session();
  if (u.owner_epoch() < s.owner_epoch() || s.owner_edge_id().empty()) {
    SetError(result->mutable_error(), v1::ERROR_CODE_FENCED,
             u.owner_epoch() < s.owner_epoch()
                 ? StrCat("owner epoch ", u.owner_epoch(), " < ", s.owner_epoch())
                 : std::string("the session is disconnected (closed or lease lapsed)"));
    return absl::OkStatus();
  }
  if (u.owner_epoch() > s.owner_epoch()) {
    SetError(result->mutable_error(), v1::ERROR_CODE_INVALID_ARGUMENT,
             StrCat("owner epoch ", u.owner_epoch(), " was never handed out"));
    return absl::OkStatus();
  }
  // 1-2. Subscriptions, kept sorted by filter.
  auto* subs = s.mutable_subscriptions();
  for (const std::string& f : u.remove_subscriptions()) {
    auto it = std::find_if(subs->begin(), subs->end(),
                           [&](const v1::SessionSubscription& x) { return x.filter() == f; });
    if (it != subs->end()) subs->erase(it);
  }
  for (const v1::SessionSubscription& sub : u.put_subscriptions()) {
    auto it = std::lower_bound(
        subs->begin(), subs->end(), sub.filter(),
        [](const v1::SessionSubscription& x, const std::string& f) { return x.filter() < f; });
    if (it != subs->end() && it->filter() == sub.filter()) {
      *it = sub;
    } else {
      int pos = static_cast<int>(it - subs->begin());
      *subs->Add() = sub;
      for (int i = subs->size() - 1; i > pos; --i) subs->SwapElements(i, i - 1);
    }
  }
  // 3-4. In-flight: outbound in delivery order, then inbound. Removals first, then puts: a put
  // replaces its entry in place, or joins the end of its direction. One pass over the entries
  // (an update may carry as many entries as the session holds).
  {
    using Key = std::pair<int, uint32_t>;  // (direction, packet id)
    std::set<Key> removed;
    for (const v1::InflightRef& ref : u.remove_inflight()) {
      removed.insert({ref.direction(), ref.packet_id()});
    }
    std::map<Key, const v1::InflightMessage*> puts;  // the last put of each key wins
    for (const v1::InflightMessage& m : u.put_inflight()) puts[{m.direction(), m.packet_id()}] = &m;
    google::protobuf::RepeatedPtrField<v1::InflightMessage> outbound, inbound;
    auto keep = [&](const v1::InflightMessage& m) {
      (m.direction() == v1::INFLIGHT_DIRECTION_OUTBOUND ? outbound : inbound).Add()->CopyFrom(m);
    };
    for (const v1::InflightMessage& m : s.inflight()) {
      Key k{m.direction(), m.packet_id()};
      if (removed.count(k)) continue;
      auto put = puts.find(k);
      if (put == puts.end()) {
        keep(m);
      } else {
        keep(*put->second);
        puts.erase(put);
      }
    }
    for (const v1::InflightMessage& m : u.put_inflight()) {
      auto put = puts.find({m.direction(), m.packet_id()});
      if (put == puts.end()) continue;  // placed already
      keep(*put->second);
      puts.erase(put);
    }
    auto* inflight = s.mutable_inflight();
    inflight->Clear();
    for (auto& m : outbound) inflight->Add(std::move(m));
    for (auto& m : inbound) inflight->Add(std::move(m));
  }
  // 5. Cursor positions, merged per partition, sorted by partition.
  auto* positions = s.mutable_cursor()->mutable_positions();
  for (const v1::PartitionPosition& p : u.commit_positions()) {
    auto it = std::lower_bound(
        positions->begin(), positions->end(), p.partition(),
        [](const v1::PartitionPosition& x, uint32_t part) { return x.partition() < part; });
    if (it != positions->end() && it->partition() == p.partition()) {
      if (p.epoch() > it->epoch() || (p.epoch() == it->epoch() && p.offset() > it->offset())) {
        *it = p;
      }
    } else {
      int pos = static_cast<int>(it - positions->begin());
      *positions->Add() = p;
      for (int i = positions->size() - 1; i > pos; --i) positions->SwapElements(i, i - 1);
    }
  }
  // 6-8. Will and expiry.
  if (u.clear_will()) s.clear_will();
  if (u.has_set_will()) *s.mutable_will() = u.set_will();
  if (u.has_expiry_interval_s()) s.set_expiry_interval_s(u.expiry_interval_s());
  PutSession(rec, batch);
  return absl::OkStatus();
}

absl::Status PartitionStateMachine::ApplyCloseSession(const v1::CloseSessionRequest& req,
                                                      int64_t now, rocksdb::WriteBatch* batch,
                                                      ApplyResult* result) {
  auto loaded = LoadSession(req.client_id());
  if (!loaded.ok()) return loaded.status();
  if (!loaded->has_value()) {
    SetError(&result->session_error, v1::ERROR_CODE_SESSION_NOT_FOUND,
             StrCat("no session for client '", req.client_id(), "'"));
    return absl::OkStatus();
  }
  v1::SessionRecord& rec = **loaded;
  if (req.owner_epoch() != rec.session().owner_epoch()) {
    SetError(
        &result->session_error,
        req.owner_epoch() < rec.session().owner_epoch() ? v1::ERROR_CODE_FENCED
                                                        : v1::ERROR_CODE_INVALID_ARGUMENT,
        StrCat("owner epoch ", req.owner_epoch(), ", session's ", rec.session().owner_epoch()));
    return absl::OkStatus();
  }
  std::optional<uint32_t> expiry;
  if (req.has_expiry_interval_s()) expiry = req.expiry_interval_s();
  bool deleted = Disconnect(rec, now, req.publish_will(), expiry, batch);
  result->close_session.emplace().set_session_deleted(deleted);
  return absl::OkStatus();
}

absl::Status PartitionStateMachine::ApplySessionTimer(const v1::SessionTimerCommand& t, int64_t now,
                                                      rocksdb::WriteBatch* batch) {
  auto loaded = LoadSession(t.client_id());
  if (!loaded.ok()) return loaded.status();
  if (!loaded->has_value()) return absl::OkStatus();
  v1::SessionRecord& rec = **loaded;
  const v1::Session& s = rec.session();
  if (s.owner_epoch() != t.owner_epoch()) return absl::OkStatus();  // a newer connection
  const bool connected = !s.owner_edge_id().empty();
  switch (t.kind()) {
    case v1::SessionTimerCommand::KIND_LEASE_LAPSED:
      if (connected) Disconnect(rec, now, /*publish_will=*/true, std::nullopt, batch);
      break;
    case v1::SessionTimerCommand::KIND_WILL_DUE:
      if (!connected && rec.will_due_unix_ms() != 0 && rec.will_due_unix_ms() <= now) {
        QueueWill(rec, batch);
        PutSession(rec, batch);
      }
      break;
    case v1::SessionTimerCommand::KIND_EXPIRED: {
      const int64_t expiry = ExpiryDeadline(s);
      if (!connected && expiry != 0 && expiry <= now) {
        if (rec.will_due_unix_ms() != 0) QueueWill(rec, batch);
        DeleteSession(s.client_id(), batch);
      }
      break;
    }
    default:
      break;
  }
  return absl::OkStatus();
}

void PartitionStateMachine::ApplyWillPublished(uint64_t will_id, rocksdb::WriteBatch* batch) {
  if (will_outbox_.erase(will_id) == 0) return;
  batch->Delete(engine_.handle(Family::kPartition), WillKey(will_id));
}

}  // namespace herald::broker
