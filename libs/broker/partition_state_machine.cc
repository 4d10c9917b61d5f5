#include "libs/broker/partition_state_machine.h"

#include <algorithm>
#include <memory>

#include <google/protobuf/arena.h>
#include <google/protobuf/io/coded_stream.h>

#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"
#include "libs/storage/keys.h"

namespace herald::broker {

using storage::Family;

namespace {

// Initial arena block for parsing a command in Apply; larger commands grow the arena.
constexpr size_t kApplyArenaBlock = 256 << 10;

// `m` serialized into a per-thread buffer, valid until the next call on this thread: records
// are copied into the write batch, so the buffer need not be allocated for each.
std::string_view Serialized(const google::protobuf::MessageLite& m) {
  thread_local std::string buf;
  buf.clear();
  m.AppendToString(&buf);
  return buf;
}

bool Expired(const v1::Message& m, int64_t now_unix_ms) {
  if (!m.has_expiry_interval_s()) return false;
  return m.publish_time_unix_ms() + int64_t{m.expiry_interval_s()} * 1000 <= now_unix_ms;
}

bool MatchesAny(const std::vector<std::string>& filters, std::string_view topic) {
  for (const auto& f : filters) {
    if (mqtt::TopicMatches(f, topic)) return true;
  }
  return false;
}

bool HasWildcard(std::string_view filter) {
  return filter.find_first_of("+#") != std::string_view::npos;
}

// MessageBatchRecord's wire format, written and read here without building the message (its
// messages are serialized once, straight into the record; readers parse only what they use).
constexpr uint8_t kBatchMessageTag = (1 << 3) | 2;  // messages = 1, length-delimited
constexpr uint8_t kBatchFirstOffsetTag = (2 << 3) | 0;  // first_offset = 2, varint

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Appends `m` to a MessageBatchRecord being built in `record`; returns where its own
// serialization starts.
size_t AppendToBatch(const v1::Message& m, std::string* record) {
  const size_t size = m.ByteSizeLong();
  record->push_back(static_cast<char>(kBatchMessageTag));
  AppendVarint(record, size);
  const size_t at = record->size();
  record->resize(at + size);
  m.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(record->data() + at));
  return at;
}

// The serialized messages of a MessageBatchRecord and its first offset; false if malformed.
bool DecodeBatch(std::string_view value, std::vector<std::string_view>* messages,
                 uint64_t* first_offset) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(value.data()),
                                            static_cast<int>(value.size()));
  *first_offset = 0;
  while (uint32_t tag = in.ReadTag()) {
    if (tag == kBatchMessageTag) {
      uint32_t len = 0;
      if (!in.ReadVarint32(&len)) return false;
      const size_t at = static_cast<size_t>(in.CurrentPosition());
      if (len > value.size() - at || !in.Skip(static_cast<int>(len))) return false;
      messages->push_back(value.substr(at, len));
    } else if (tag == kBatchFirstOffsetTag) {
      if (!in.ReadVarint64(first_offset)) return false;
    } else {
      return false;  // no other fields exist
    }
  }
  return static_cast<size_t>(in.CurrentPosition()) == value.size() && *first_offset != 0;
}

}  // namespace

// Key layout in the partition column family: [partition u32][kind u8][...]
//   'n'                  PartitionStateRecord. It sorts right after the newest message, so
//                        writing it after a batch of messages inserts it next to them in the
//                        memtable's skiplist (cheap), not at a distant place (a full search).
//   'S'                  PartitionStateRecord as stored by earlier versions: read when there
//                        is no 'n', deleted when 'n' is first written
//   'm' [offset u64]     from batched_from_offset on: MessageBatchRecord of the messages one
//                        publish command appended, keyed by the last one's offset; below it
//                        (partitions written by earlier versions): one Message per offset.
//                        Messages have partition, offset and publish time filled in.
//   'r' [topic bytes]    retained Message
//   'p' [producer u64]   ProducerRecord
//   'c' [client id]      SessionRecord
//   'w' [will id u64]    WillOutboxRecord
std::string PartitionStateMachine::Key(char kind) const {
  std::string k;
  storage::PutU32(&k, partition_);
  k.push_back(kind);
  return k;
}

std::string PartitionStateMachine::MessageKey(uint64_t offset) const {
  std::string k = Key('m');
  storage::PutU64(&k, offset);
  return k;
}

std::string PartitionStateMachine::RetainedKey(std::string_view topic) const {
  std::string k = Key('r');
  k.append(topic);
  return k;
}

std::string PartitionStateMachine::ProducerKey(uint64_t producer_id) const {
  std::string k = Key('p');
  storage::PutU64(&k, producer_id);
  return k;
}

std::string PartitionStateMachine::SessionKey(std::string_view client_id) const {
  std::string k = Key('c');
  k.append(client_id);
  return k;
}

std::string PartitionStateMachine::WillKey(uint64_t will_id) const {
  std::string k = Key('w');
  storage::PutU64(&k, will_id);
  return k;
}

absl::StatusOr<std::unique_ptr<PartitionStateMachine>> PartitionStateMachine::Open(
    storage::Engine& engine, uint32_t partition, PartitionOptions options) {
  std::unique_ptr<PartitionStateMachine> p(new PartitionStateMachine(engine, partition, options));
  absl::Status s = p->Load();
  if (!s.ok()) return s;
  return p;
}

absl::Status PartitionStateMachine::Load() {
  auto v = engine_.Get(Family::kPartition, Key('n'));
  if (v.ok() && !v->has_value()) {
    v = engine_.Get(Family::kPartition, Key('S'));
    legacy_state_key_ = v.ok() && v->has_value();
  }
  if (!v.ok()) return v.status();
  if (!v->has_value()) {
    state_.set_epoch(1);
    state_.set_first_offset(1);
    state_.set_next_offset(1);
    state_.set_producers_through_offset(1);
    state_.set_batched_from_offset(1);
    return absl::OkStatus();
  }
  if (!state_.ParseFromString(**v)) {
    return absl::DataLossError(StrCat("partition ", partition_, ": state record is corrupt"));
  }
  // Written before checkpoints: the producer records were written with every batch.
  if (!state_.has_producers_through_offset()) {
    state_.set_producers_through_offset(state_.next_offset());
  }
  // Written before batches: every stored message has a record of its own.
  if (!state_.has_batched_from_offset()) state_.set_batched_from_offset(state_.next_offset());
  if (absl::Status s = LoadSessions(); !s.ok()) return s;
  return ReplayProducers();
}

absl::Status PartitionStateMachine::ReplayProducers() {
  const uint64_t from = std::max(state_.producers_through_offset(), state_.first_offset());
  if (from >= state_.next_offset()) return absl::OkStatus();
  auto records = NewMessageIterator();
  rocksdb::Iterator* it = records->it.get();
  uint64_t expected = from;
  std::vector<StoredMessage> stored;
  for (it->Seek(MessageKey(from)); it->Valid(); it->Next()) {
    absl::Status s = DecodeMessages(*it, &stored);
    if (!s.ok()) return s;
    for (const StoredMessage& sm : stored) {
      if (sm.offset < from) continue;
      v1::Message m;
      if (sm.offset != expected ||
          !m.ParseFromArray(sm.bytes.data(), static_cast<int>(sm.bytes.size()))) {
        return absl::DataLossError(StrCat("partition ", partition_, ": message ", expected,
                                          " is missing or corrupt; producers cannot be restored"));
      }
      ++expected;
      if (m.producer_id() == 0) continue;
      RecordProducerMessage(m.producer_id(), Producer(m.producer_id()), m.sequence(), sm.offset,
                            m.publish_time_unix_ms());
    }
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "producer replay");
  if (expected != state_.next_offset()) {
    return absl::DataLossError(StrCat("partition ", partition_, ": message ", expected,
                                      " is missing; producers cannot be restored"));
  }
  return absl::OkStatus();
}

void PartitionStateMachine::StageApplied(rocksdb::WriteBatch* batch) {
  if (!state_dirty_) return;  // nothing applied since the last call
  if (checkpoint_producers_ || state_.next_offset() - state_.producers_through_offset() >=
                                   options_.producer_checkpoint_messages) {
    for (uint64_t pid : dirty_producers_) {
      auto it = producers_.find(pid);
      if (it == producers_.end()) continue;
      batch->Put(engine_.handle(Family::kPartition), ProducerKey(pid), Serialized(it->second));
    }
    dirty_producers_.clear();
    checkpoint_producers_ = false;
    state_.set_producers_through_offset(state_.next_offset());
  }
  batch->Put(engine_.handle(Family::kPartition), Key('n'), Serialized(state_));
  if (legacy_state_key_) {
    batch->Delete(engine_.handle(Family::kPartition), Key('S'));
    legacy_state_key_ = false;
  }
  state_dirty_ = false;
}

void PartitionStateMachine::ApplyOther(uint64_t index) {
  if (index <= state_.applied_index()) return;
  state_.set_applied_index(index);
  state_dirty_ = true;
}

void PartitionStateMachine::ApplyConf(uint64_t index, const std::vector<uint64_t>& voters,
                                      const std::vector<uint64_t>& learners) {
  if (index <= state_.applied_index()) return;
  state_.set_applied_index(index);
  state_.mutable_conf_voters()->Assign(voters.begin(), voters.end());
  state_.mutable_conf_learners()->Assign(learners.begin(), learners.end());
  state_.set_conf_index(index);
  state_dirty_ = true;
}

absl::StatusOr<ApplyResult> PartitionStateMachine::Apply(uint64_t index, std::string_view data,
                                                         rocksdb::WriteBatch* batch) {
  ApplyResult result;
  if (index <= state_.applied_index()) return result;
  // The command's many small pieces (messages, their topics and payloads) come from one arena
  // that starts in a reused per-thread block: no allocation per piece.
  thread_local std::unique_ptr<char[]> block(new char[kApplyArenaBlock]);
  google::protobuf::ArenaOptions arena_options;
  arena_options.initial_block = block.get();
  arena_options.initial_block_size = kApplyArenaBlock;
  google::protobuf::Arena arena(arena_options);
  v1::PartitionCommand& cmd = *google::protobuf::Arena::CreateMessage<v1::PartitionCommand>(&arena);
  if (!cmd.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return absl::DataLossError(
        StrCat("partition ", partition_, ": entry ", index, " is not a partition command"));
  }
  const int64_t now = cmd.proposed_at_unix_ms();
  switch (cmd.command_case()) {
    case v1::PartitionCommand::kPublish: {
      // The messages appended become MessageBatchRecords, built in a reused buffer: one per
      // command, or one per max_record_bytes of a large command (so that reading one message
      // never decodes a whole merged entry of up to 1 MiB). The split depends only on the
      // messages, so every replica of the same version stores the same records (an earlier
      // version's replica may hold larger ones: readers and trims do not depend on the split).
      thread_local std::string record;
      record.clear();
      uint64_t first = state_.next_offset();
      auto put_record = [&] {
        record.push_back(static_cast<char>(kBatchFirstOffsetTag));
        AppendVarint(&record, first);
        batch->Put(engine_.handle(Family::kPartition), MessageKey(state_.next_offset() - 1),
                   record);
        state_.set_message_bytes(state_.message_bytes() + record.size());
        record.clear();
        first = state_.next_offset();
      };
      result.publish.reserve(cmd.publish().messages_size());
      for (v1::Message& m : *cmd.mutable_publish()->mutable_messages()) {
        result.publish.push_back(ApplyMessage(m, now, batch, &record));
        if (!record.empty() && record.size() >= options_.max_record_bytes) put_record();
      }
      if (state_.next_offset() > first) put_record();
      break;
    }
    case v1::PartitionCommand::kTrim:
      ApplyTrim(cmd.trim(), batch);
      break;
    case v1::PartitionCommand::kCompactLog:
      result.compact_log_through = cmd.compact_log().through_index();
      break;
    case v1::PartitionCommand::kOpenSession: {
      absl::Status s = ApplyOpenSession(cmd.open_session().request(), now, batch, &result);
      if (!s.ok()) return s;
      break;
    }
    case v1::PartitionCommand::kUpdateSessions:
      for (const v1::SessionUpdate& u : cmd.update_sessions().updates()) {
        absl::Status s = ApplyUpdateSession(u, batch, &result.session_updates.emplace_back());
        if (!s.ok()) return s;
      }
      break;
    case v1::PartitionCommand::kCloseSession: {
      absl::Status s = ApplyCloseSession(cmd.close_session().request(), now, batch, &result);
      if (!s.ok()) return s;
      break;
    }
    case v1::PartitionCommand::kSessionTimer: {
      absl::Status s = ApplySessionTimer(cmd.session_timer(), now, batch);
      if (!s.ok()) return s;
      break;
    }
    case v1::PartitionCommand::kWillPublished:
      ApplyWillPublished(cmd.will_published().will_id(), batch);
      break;
    case v1::PartitionCommand::COMMAND_NOT_SET:
      break;  // a command from a newer version this one does not know: nothing to do
  }
  state_.set_applied_index(index);
  state_dirty_ = true;
  return result;
}

v1::ProducerRecord* PartitionStateMachine::Producer(uint64_t producer_id) {
  auto it = producers_.find(producer_id);
  if (it != producers_.end()) return &it->second;
  auto v = engine_.Get(Family::kPartition, ProducerKey(producer_id));
  if (!v.ok() || !v->has_value()) return nullptr;
  v1::ProducerRecord rec;
  if (!rec.ParseFromString(**v)) return nullptr;
  return &producers_.emplace(producer_id, std::move(rec)).first->second;
}

v1::PublishResult PartitionStateMachine::ApplyMessage(v1::Message& m, int64_t now,
                                                      rocksdb::WriteBatch* batch,
                                                      std::string* record) {
  v1::PublishResult r;
  r.set_partition(partition_);
  const uint64_t pid = m.producer_id();
  v1::ProducerRecord* producer = pid != 0 ? Producer(pid) : nullptr;
  if (producer != nullptr) {
    const uint64_t last = producer->last_sequence();
    if (m.sequence() <= last) {
      // A retry of something already committed: success, not appended again.
      r.set_duplicate(true);
      uint64_t back = last - m.sequence();
      int n = producer->recent_offsets_size();
      if (back < static_cast<uint64_t>(n)) {
        r.set_epoch(state_.epoch());
        r.set_offset(producer->recent_offsets(n - 1 - static_cast<int>(back)));
      } else {
        r.mutable_error()->set_code(v1::ERROR_CODE_DUPLICATE);
        r.mutable_error()->set_message("duplicate of a message older than the remembered offsets");
      }
      return r;
    }
    if (m.sequence() > last + 1) {
      r.mutable_error()->set_code(v1::ERROR_CODE_OUT_OF_ORDER_SEQUENCE);
      r.mutable_error()->set_message(StrCat("sequence ", m.sequence(), " after ", last,
                                            ": an earlier message of this producer is missing"));
      return r;
    }
  }
  const uint64_t offset = state_.next_offset();
  m.set_partition(partition_);
  m.set_offset(offset);
  m.set_publish_time_unix_ms(now);
  const size_t at = AppendToBatch(m, record);
  if (m.retain()) {
    // MQTT 5.0 §3.3.1.3: an empty retained payload removes the retained message; the message
    // itself is still delivered to current subscribers.
    if (m.payload().empty()) {
      batch->Delete(engine_.handle(Family::kPartition), RetainedKey(m.topic()));
    } else {
      batch->Put(engine_.handle(Family::kPartition), RetainedKey(m.topic()),
                 std::string_view(*record).substr(at));
    }
  }
  state_.set_next_offset(offset + 1);
  state_.set_message_count(state_.message_count() + 1);
  if (pid != 0) RecordProducerMessage(pid, producer, m.sequence(), offset, now);
  r.set_epoch(state_.epoch());
  r.set_offset(offset);
  return r;
}

void PartitionStateMachine::RecordProducerMessage(uint64_t producer_id,
                                                  v1::ProducerRecord* producer, uint64_t sequence,
                                                  uint64_t offset, int64_t now) {
  // `producer` already points into producers_ when known: no second lookup.
  v1::ProducerRecord& rec = producer != nullptr ? *producer : producers_[producer_id];
  if (producer == nullptr) rec.Clear();  // new (or forgotten) producer
  rec.set_last_sequence(sequence);
  rec.add_recent_offsets(offset);
  if (rec.recent_offsets_size() > options_.producer_recent_offsets) {
    rec.mutable_recent_offsets()->erase(rec.mutable_recent_offsets()->begin());
  }
  rec.set_last_publish_unix_ms(now);
  // Written at the next checkpoint (StageApplied), however many messages it sends until then.
  dirty_producers_.insert(producer_id);
}

void PartitionStateMachine::ApplyTrim(const v1::TrimCommand& t, rocksdb::WriteBatch* batch) {
  if (t.has_from_offset() && t.from_offset() != state_.first_offset()) return;  // stale plan
  uint64_t before = std::min(t.before_offset(), state_.next_offset());
  if (before <= state_.first_offset()) return;  // already trimmed (or nothing to do)
  // The producer records must not depend on replaying messages this removes.
  if (before > state_.producers_through_offset()) checkpoint_producers_ = true;
  // From offset 0 (never a message), not first_offset: a range deletion must not begin at a
  // key that gets memtable insert hints (storage::Engine, AppendHint).
  engine_.StageDeleteRange(batch, Family::kPartition, MessageKey(0), MessageKey(before));
  state_.set_first_offset(before);
  state_.set_message_count(state_.message_count() -
                           std::min(state_.message_count(), t.removed_messages()));
  state_.set_message_bytes(state_.message_bytes() -
                           std::min(state_.message_bytes(), t.removed_bytes()));
  state_.set_trimmed_messages(state_.trimmed_messages() + t.removed_messages());
}

absl::StatusOr<FetchOutput> PartitionStateMachine::Fetch(uint64_t after_offset,
                                                         uint64_t until_offset,
                                                         const mqtt::TopicFilterSet& filters,
                                                         int64_t now_unix_ms,
                                                         FetchLimits limits) const {
  FetchOutput out;
  uint64_t last = last_offset();
  uint64_t end = until_offset == 0 ? last : std::min(until_offset, last);
  uint64_t start = after_offset + 1;
  if (start < state_.first_offset()) {
    out.gap_to = state_.first_offset() - 1;
    start = state_.first_offset();
  }
  out.evaluated_through = std::max(after_offset, out.gap_to);
  if (start > end) return out;
  auto records = NewMessageIterator();
  rocksdb::Iterator* it = records->it.get();
  uint64_t bytes = 0;
  uint64_t scanned = 0;
  bool past_end = false;
  std::vector<StoredMessage> stored;
  for (it->Seek(MessageKey(start)); it->Valid(); it->Next()) {
    absl::Status s = DecodeMessages(*it, &stored);
    if (!s.ok()) return s;
    for (const StoredMessage& sm : stored) {
      if (sm.offset < start) continue;  // earlier messages of the first batch
      if (sm.offset > end) {
        past_end = true;
        break;
      }
      if (++scanned > limits.max_scanned) return out;  // evaluated_through: the last looked at
      v1::Message m;
      if (!m.ParseFromArray(sm.bytes.data(), static_cast<int>(sm.bytes.size())) ||
          m.offset() != sm.offset) {
        return absl::DataLossError(
            StrCat("partition ", partition_, ": message ", sm.offset, " is corrupt"));
      }
      if (!Expired(m, now_unix_ms) && filters.Matches(m.topic())) {
        uint64_t size = sm.bytes.size();
        if (!out.messages.empty() &&
            (out.messages.size() >= limits.max_messages || bytes + size > limits.max_bytes)) {
          return out;  // evaluated_through stays before this message
        }
        bytes += size;
        out.messages.push_back(std::move(m));
      }
      out.evaluated_through = sm.offset;
    }
    if (past_end) break;
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "fetch");
  out.evaluated_through = end;
  return out;
}

absl::StatusOr<std::optional<v1::Message>> PartitionStateMachine::GetRetained(
    std::string_view topic, int64_t now_unix_ms) const {
  auto v = engine_.Get(Family::kPartition, RetainedKey(topic));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<v1::Message>();
  v1::Message m;
  if (!m.ParseFromString(**v)) {
    return absl::DataLossError(StrCat("partition ", partition_, ": retained message is corrupt"));
  }
  if (Expired(m, now_unix_ms)) return std::optional<v1::Message>();
  return std::optional<v1::Message>(std::move(m));
}

absl::StatusOr<std::vector<v1::Message>> PartitionStateMachine::MatchRetained(
    std::string_view filter, int64_t now_unix_ms, size_t max_messages) const {
  std::vector<v1::Message> out;
  if (!HasWildcard(filter)) {
    auto one = GetRetained(filter, now_unix_ms);
    if (!one.ok()) return one.status();
    if (one->has_value()) out.push_back(std::move(**one));
    return out;
  }
  std::string prefix = Key('r');
  auto it = engine_.NewIterator(Family::kPartition);
  for (it->Seek(prefix); it->Valid() && out.size() < max_messages; it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (!key.starts_with(prefix)) break;
    std::string_view topic = key.substr(prefix.size());
    if (!mqtt::TopicMatches(filter, topic)) continue;
    v1::Message m;
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(StrCat("partition ", partition_, ": retained message is corrupt"));
    }
    if (!Expired(m, now_unix_ms)) out.push_back(std::move(m));
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "retained scan");
  return out;
}

absl::StatusOr<std::vector<v1::Message>> PartitionStateMachine::RetainedPage(
    const std::vector<std::string>& filters, std::string_view after_topic, int64_t now_unix_ms,
    size_t max_messages, uint64_t max_bytes, std::string* next_after_topic,
    size_t max_scanned) const {
  std::vector<v1::Message> out;
  next_after_topic->clear();
  const std::string prefix = Key('r');
  std::string start = prefix;
  start.append(after_topic);
  if (!after_topic.empty()) start.push_back('\0');  // strictly after
  auto it = engine_.NewIterator(Family::kPartition);
  uint64_t bytes = 0;
  size_t scanned = 0;
  std::string last_looked_at;
  for (it->Seek(start); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (!key.starts_with(prefix)) break;
    std::string_view topic = key.substr(prefix.size());
    if (++scanned > max_scanned) {
      *next_after_topic = last_looked_at;  // go on after it
      break;
    }
    last_looked_at.assign(topic);
    if (!MatchesAny(filters, topic)) continue;
    if (!out.empty() && (out.size() >= max_messages || bytes + it->value().size() > max_bytes)) {
      *next_after_topic = out.back().topic();
      break;
    }
    v1::Message m;
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(StrCat("partition ", partition_, ": retained message is corrupt"));
    }
    if (Expired(m, now_unix_ms)) continue;
    bytes += it->value().size();
    out.push_back(std::move(m));
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "retained scan");
  return out;
}

absl::StatusOr<std::optional<v1::TrimCommand>> PartitionStateMachine::PlanRetention(
    int64_t now_unix_ms, int64_t max_age_ms, uint64_t max_bytes, size_t max_records,
    uint64_t max_scanned_bytes) const {
  if (max_age_ms <= 0 && max_bytes == 0) return std::optional<v1::TrimCommand>();
  uint64_t remaining = state_.message_bytes();
  v1::TrimCommand trim;
  trim.set_from_offset(state_.first_offset());
  trim.set_before_offset(state_.first_offset());
  // Whole records: a record's messages share their publish time, and its bytes are counted as
  // one (message_bytes).
  // Old records are read once here, by the leader only: not worth a place in the block cache.
  auto records = NewMessageIterator(/*fill_cache=*/false);
  rocksdb::Iterator* it = records->it.get();
  std::vector<StoredMessage> stored;
  size_t looked_at = 0;
  uint64_t scanned_bytes = 0;
  for (it->Seek(MessageKey(state_.first_offset()));
       it->Valid() && looked_at < max_records && scanned_bytes < max_scanned_bytes;
       it->Next(), ++looked_at) {
    scanned_bytes += it->value().size();
    absl::Status s = DecodeMessages(*it, &stored);
    if (!s.ok()) return s;
    // A batch that began below first_offset (a trim planned by an earlier version cut it):
    // only its messages from first_offset on are still counted.
    size_t skip = 0;
    while (skip < stored.size() && stored[skip].offset < state_.first_offset()) ++skip;
    if (skip == stored.size()) continue;
    const uint64_t size = it->value().size();
    // Kept unless what stays without it is still at least max_bytes.
    bool over_size = max_bytes > 0 && remaining >= size && remaining - size >= max_bytes;
    bool too_old = false;
    if (max_age_ms > 0 && !over_size) {
      v1::Message m;
      const StoredMessage& sm = stored[skip];
      if (!m.ParseFromArray(sm.bytes.data(), static_cast<int>(sm.bytes.size()))) {
        return absl::DataLossError(
            StrCat("partition ", partition_, ": message ", sm.offset, " is corrupt"));
      }
      too_old = m.publish_time_unix_ms() < now_unix_ms - max_age_ms;
    }
    if (!over_size && !too_old) break;
    remaining -= std::min(remaining, size);
    trim.set_removed_messages(trim.removed_messages() + (stored.size() - skip));
    trim.set_removed_bytes(trim.removed_bytes() + size);
    trim.set_before_offset(stored.back().offset + 1);
  }
  if (!it->status().ok()) return storage::FromRocks(it->status(), "retention scan");
  if (trim.removed_messages() == 0) return std::optional<v1::TrimCommand>();
  return std::optional<v1::TrimCommand>(std::move(trim));
}

std::unique_ptr<PartitionStateMachine::MessageIterator> PartitionStateMachine::NewMessageIterator(
    bool fill_cache) const {
  auto m = std::make_unique<MessageIterator>();
  // Every message record's key is at most the last offset's: the bound keeps the iterator
  // out of the partition's other records.
  m->upper = MessageKey(state_.next_offset());
  m->upper_slice = rocksdb::Slice(m->upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &m->upper_slice;
  ro.fill_cache = fill_cache;
  m->it = engine_.NewIterator(Family::kPartition, ro);
  return m;
}

absl::Status PartitionStateMachine::DecodeMessages(const rocksdb::Iterator& it,
                                                   std::vector<StoredMessage>* out) const {
  out->clear();
  std::string_view key(it.key().data(), it.key().size());
  std::string_view value(it.value().data(), it.value().size());
  uint64_t offset = 0;
  if (key.size() != 13 || !key.starts_with(message_prefix_)) {
    return absl::DataLossError(StrCat("partition ", partition_, ": unexpected key in messages"));
  }
  key.remove_prefix(5);
  storage::GetU64(&key, &offset);
  if (offset < state_.batched_from_offset()) {
    out->push_back(StoredMessage{offset, value});
    return absl::OkStatus();
  }
  thread_local std::vector<std::string_view> messages;
  messages.clear();
  uint64_t first = 0;
  if (!DecodeBatch(value, &messages, &first) || messages.empty() ||
      first + messages.size() - 1 != offset) {
    return absl::DataLossError(
        StrCat("partition ", partition_, ": message batch ending at ", offset, " is corrupt"));
  }
  for (size_t i = 0; i < messages.size(); ++i) out->push_back({first + i, messages[i]});
  return absl::OkStatus();
}

}  // namespace herald::broker
