// The state machine of one topic partition (DESIGN §2-3): applies the partition's committed
// Raft entries and serves reads of what they built.
//
// Applying assigns dense offsets, stores message records, keeps the last retained message per
// topic (an empty retained payload deletes it), judges idempotent publishes by (producer id,
// sequence), and trims old messages as the leader's retention commands say. Every apply stages
// its writes, including the partition's applied index, into the caller's WriteBatch, so that the
// host writes one atomic batch per loop pass and re-applying after a crash is a no-op.
//
// MQTT persistent sessions (broker.proto "Sessions", docs/core.md "Sessions") live here too: a
// session record per client id of this partition, the partition's owner-epoch counter, and an
// outbox of wills that are due. Every replica keeps an in-memory index of the sessions' durable
// deadlines (will delay, session expiry), so the leader finds what is due without scanning.
//
// Apply is deterministic: it depends only on the entry and the state (never on the local clock).
//
// Reads (Fetch, retained lookups, retention planning) see what has been written to the Engine,
// so the host must write each batch before it serves reads that depend on it.
//
// Threading: owned by the loop that owns the partition's Raft group.
#pragma once

#include <rocksdb/write_batch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/protocol/mqtt/topic.h"
#include "herald/v1/broker.pb.h"
#include "herald/v1/partition.pb.h"
#include "libs/storage/engine.h"

namespace herald::broker {

struct PartitionOptions {
  // How many recent offsets each producer's record remembers, so that a retried duplicate is
  // answered with its original offset.
  int producer_recent_offsets = 32;
  // Producers' dedup records are written once this many messages were appended since they were
  // last written (a checkpoint), not with every batch; loading the partition replays at most
  // this many stored messages into them. Each record written is an insert at a distant place of
  // the memtable, the costliest kind of write there.
  uint64_t producer_checkpoint_messages = 4096;
  // A publish command's messages are stored as one record (MessageBatchRecord), or as several
  // when they take more than this: a record is closed once it reaches this size.
  uint64_t max_record_bytes = 64 << 10;
};

// What applying one entry produced, for the leader to answer the proposer.
struct ApplyResult {
  // One per message of a PublishCommand, in order.
  std::vector<v1::PublishResult> publish;
  // A CompactLogCommand: the host discards the Raft log up to this index (0: none).
  uint64_t compact_log_through = 0;
  // An OpenSessionCommand: the answer (lease_ms is the service's to fill).
  std::optional<v1::OpenSessionResponse> open_session;
  // An UpdateSessionsCommand: one result per update, in order.
  std::vector<v1::SessionUpdateResult> session_updates;
  // A CloseSessionCommand: the answer, or `session_error` (code != 0) when it failed.
  std::optional<v1::CloseSessionResponse> close_session;
  v1::ErrorInfo session_error;
};

// A session deadline that has passed, for the leader to propose as a SessionTimerCommand.
struct SessionTimer {
  std::string client_id;
  uint64_t owner_epoch = 0;
  v1::SessionTimerCommand::Kind kind = v1::SessionTimerCommand::KIND_UNSPECIFIED;
};

// MQTT Session Expiry Interval meaning "never expires".
inline constexpr uint32_t kSessionNeverExpires = 0xFFFFFFFF;

// The idempotency key of the will of `client_id`'s connection with owner epoch `owner_epoch`:
// a producer id of its own (never 0) with sequence 1, so that publishing it again is a duplicate
// and the first publish is accepted whatever the partition knows of other producers.
uint64_t WillProducerId(std::string_view client_id, uint64_t owner_epoch);

// Bounds of one read.
struct FetchLimits {
  uint32_t max_messages = 1000;
  uint64_t max_bytes = 1 << 20;
  // Stored messages looked at, matching or not: reads run on the Raft host's thread, so a
  // filter that matches little must not scan a long log in one go (evaluated_through tells
  // where to go on).
  uint64_t max_scanned = 10000;
};

struct FetchOutput {
  std::vector<v1::Message> messages;
  // Every message with offset <= this was evaluated (returned, filtered out or expired).
  uint64_t evaluated_through = 0;
  // The first stored offset, when the read started below it (retention removed what was
  // asked for): a gap to report. 0 otherwise.
  uint64_t gap_to = 0;
};

class PartitionStateMachine {
 public:
  // Loads partition `partition`'s state (a fresh partition when none is stored).
  static absl::StatusOr<std::unique_ptr<PartitionStateMachine>> Open(storage::Engine& engine,
                                                                     uint32_t partition,
                                                                     PartitionOptions options = {});

  // Applies the committed entry at Raft index `index` whose data is a PartitionCommand.
  // Entries at or below applied_index() are skipped (empty result). A command that cannot be
  // decoded is a corrupt log: error, and the host must stop this replica.
  absl::StatusOr<ApplyResult> Apply(uint64_t index, std::string_view data,
                                    rocksdb::WriteBatch* batch);
  // Records that the entry at `index` (a Raft no-op or membership change) was applied (staged
  // by the next StageApplied).
  void ApplyOther(uint64_t index);
  // Stages the records every apply since the last call changed in place (the partition state
  // with its applied index, producers' dedup records): once per batch, not once per entry, so a
  // pass applying many entries writes each of them once. Must be called after the last Apply,
  // ApplyOther or ApplyConf staged into `batch` and before `batch` is written: the applied
  // index then lands in the same batch as what was applied (replay after a crash stays
  // idempotent).
  void StageApplied(rocksdb::WriteBatch* batch);
  // Tells the state machine that every batch it staged so far has been written to the Engine,
  // so it can drop its copies of sessions staged but not yet readable from the Engine.
  void Flushed();

  // Sessions. Reads see every applied entry, written or only staged.
  // The session of `client_id`, or nullopt.
  absl::StatusOr<std::optional<v1::Session>> GetSession(std::string_view client_id) const;
  // Up to `max` session deadlines at or before `now_unix_ms`, earliest first.
  std::vector<SessionTimer> DueSessionTimers(int64_t now_unix_ms, size_t max) const;
  // Calls `fn(client_id, owner_epoch)` for every connected session.
  void ForEachConnectedSession(const std::function<void(const std::string&, uint64_t)>& fn) const;
  // Whether `client_id`'s session is connected with owner epoch `owner_epoch`.
  bool SessionConnected(const std::string& client_id, uint64_t owner_epoch) const;
  // Wills that are due and not yet known to be published, by will id.
  const std::map<uint64_t, v1::WillOutboxRecord>& will_outbox() const { return will_outbox_; }

  // Messages with after_offset < offset <= until (0: up to the last), matching any of
  // `filters` (MQTT topic filters) and not expired at `now_unix_ms`.
  absl::StatusOr<FetchOutput> Fetch(uint64_t after_offset, uint64_t until_offset,
                                    const mqtt::TopicFilterSet& filters, int64_t now_unix_ms,
                                    FetchLimits limits) const;
  // The retained message of `topic`, if any and not expired.
  absl::StatusOr<std::optional<v1::Message>> GetRetained(std::string_view topic,
                                                         int64_t now_unix_ms) const;
  // Retained messages whose topic matches `filter`, in topic order.
  absl::StatusOr<std::vector<v1::Message>> MatchRetained(std::string_view filter,
                                                         int64_t now_unix_ms,
                                                         size_t max_messages) const;
  // One page of retained messages whose topic matches any of `filters` and sorts strictly after
  // `after_topic`, in topic order, at most `max_messages` (at least one if any) and about
  // `max_bytes`, looking at no more than `max_scanned` retained messages (matching or not: the
  // host's thread must not stall on a long scan). `*next_after_topic` is set to the last topic
  // returned or looked at when the page ends early, else cleared.
  absl::StatusOr<std::vector<v1::Message>> RetainedPage(const std::vector<std::string>& filters,
                                                        std::string_view after_topic,
                                                        int64_t now_unix_ms, size_t max_messages,
                                                        uint64_t max_bytes,
                                                        std::string* next_after_topic,
                                                        size_t max_scanned = 10000) const;

  // Retention: the trim that removes every message older than `max_age_ms` (0: no age limit)
  // and the oldest messages while what stays is still at least `max_bytes` (0: no size limit;
  // so a partition keeps at least max_bytes of its newest messages and exceeds it by less than
  // one record), or nothing. Whole records go (a publish command's messages, or up to
  // max_record_bytes of them). At most `max_records` records and about `max_scanned_bytes` of
  // them are looked at, so a large backlog is trimmed in several steps without a long read on
  // the host's thread. The leader proposes it as a TrimCommand.
  absl::StatusOr<std::optional<v1::TrimCommand>> PlanRetention(
      int64_t now_unix_ms, int64_t max_age_ms, uint64_t max_bytes, size_t max_records = 10000,
      uint64_t max_scanned_bytes = 4 << 20) const;

  // Records that the entry at `index` changed the group's membership to `conf`.
  // Staged by the next StageApplied.
  void ApplyConf(uint64_t index, const std::vector<uint64_t>& voters,
                 const std::vector<uint64_t>& learners);

  uint32_t partition() const { return partition_; }
  uint64_t applied_index() const { return state_.applied_index(); }
  const v1::PartitionStateRecord& state() const { return state_; }
  // Offset of the last stored message (0 if none was ever stored).
  uint64_t last_offset() const { return state_.next_offset() - 1; }

 private:
  PartitionStateMachine(storage::Engine& engine, uint32_t partition, PartitionOptions options)
      : engine_(engine), partition_(partition), options_(options), message_prefix_(Key('m')) {}
  absl::Status Load();
  // Judges and appends one message of a publish command: its serialization goes into `record`,
  // the command's MessageBatchRecord being built.
  v1::PublishResult ApplyMessage(v1::Message& m, int64_t now, rocksdb::WriteBatch* batch,
                                 std::string* record);
  // Reading stored messages, whatever their record layout (see batched_from_offset).
  struct MessageIterator {  // over the message records, bounded by the last offset
    std::string upper;
    rocksdb::Slice upper_slice;
    std::unique_ptr<rocksdb::Iterator> it;
  };
  std::unique_ptr<MessageIterator> NewMessageIterator(bool fill_cache = true) const;
  struct StoredMessage {
    uint64_t offset;
    std::string_view bytes;  // a serialized Message, pointing into the iterator's value
  };
  // The messages of the record at `it`, in offset order.
  absl::Status DecodeMessages(const rocksdb::Iterator& it, std::vector<StoredMessage>* out) const;
  void ApplyTrim(const v1::TrimCommand& t, rocksdb::WriteBatch* batch);
  // Sessions (session_state.cc).
  absl::Status LoadSessions();
  absl::StatusOr<std::optional<v1::SessionRecord>> LoadSession(std::string_view client_id) const;
  absl::Status ApplyOpenSession(const v1::OpenSessionRequest& req, int64_t now,
                                rocksdb::WriteBatch* batch, ApplyResult* result);
  absl::Status ApplyUpdateSession(const v1::SessionUpdate& u, rocksdb::WriteBatch* batch,
                                  v1::SessionUpdateResult* result);
  absl::Status ApplyCloseSession(const v1::CloseSessionRequest& req, int64_t now,
                                 rocksdb::WriteBatch* batch, ApplyResult* result);
  absl::Status ApplySessionTimer(const v1::SessionTimerCommand& t, int64_t now,
                                 rocksdb::WriteBatch* batch);
  void ApplyWillPublished(uint64_t will_id, rocksdb::WriteBatch* batch);
  // Disconnects `rec`'s session at `now` (see CloseSessionRequest); deletes it and returns true
  // when its expiry interval is 0.
  bool Disconnect(v1::SessionRecord& rec, int64_t now, bool publish_will,
                  std::optional<uint32_t> expiry_interval_s, rocksdb::WriteBatch* batch);
  // Moves the session's will (if any) to the outbox, and clears it.
  void QueueWill(v1::SessionRecord& rec, rocksdb::WriteBatch* batch);
  void PutSession(const v1::SessionRecord& rec, rocksdb::WriteBatch* batch);
  void DeleteSession(const std::string& client_id, rocksdb::WriteBatch* batch);
  void IndexSession(const std::string& client_id, const v1::SessionRecord* rec);
  v1::ProducerRecord* Producer(uint64_t producer_id);
  // Records that `producer` (Producer(producer_id): nullptr when unknown) published the message
  // with `sequence` at `offset` at `now`; marks it dirty. Shared by apply and load-time replay,
  // so both build the same record.
  void RecordProducerMessage(uint64_t producer_id, v1::ProducerRecord* producer, uint64_t sequence,
                             uint64_t offset, int64_t now);
  // Replays the stored messages from state_.producers_through_offset() into the producers.
  absl::Status ReplayProducers();

  std::string Key(char kind) const;
  std::string MessageKey(uint64_t offset) const;
  std::string RetainedKey(std::string_view topic) const;
  std::string ProducerKey(uint64_t producer_id) const;
  // Producers whose record changed since their records were last written, whether the next
  // StageApplied must write them whatever the count (retention is about to remove messages the
  // stored records do not reflect), whether state_ changed since the last StageApplied, and
  // whether the state record is still stored under its former key ('S').
  std::set<uint64_t> dirty_producers_;
  bool checkpoint_producers_ = false;
  bool state_dirty_ = false;
  bool legacy_state_key_ = false;
  std::string SessionKey(std::string_view client_id) const;
  std::string WillKey(uint64_t will_id) const;

  storage::Engine& engine_;
  const uint32_t partition_;
  const PartitionOptions options_;
  v1::PartitionStateRecord state_;
  // Producers touched since open; authoritative (the Engine's records may lag, see
  // producer_checkpoint_messages).
  std::unordered_map<uint64_t, v1::ProducerRecord> producers_;

  // Sessions written to batches that may not be in the Engine yet (nullopt: deleted), until
  // Flushed().
  std::unordered_map<std::string, std::optional<v1::SessionRecord>> staged_sessions_;
  // Every session's owner and next durable deadline (0: none), with the deadlines ordered.
  struct SessionMeta {
    uint64_t owner_epoch = 0;
    bool connected = false;
    int64_t deadline = 0;
    v1::SessionTimerCommand::Kind kind = v1::SessionTimerCommand::KIND_UNSPECIFIED;
  };
  std::unordered_map<std::string, SessionMeta> sessions_;
  std::set<std::pair<int64_t, std::string>> session_deadlines_;
  // The will outbox (also in the Engine; small: only wills awaiting publication).
  std::map<uint64_t, v1::WillOutboxRecord> will_outbox_;
  // Key('m'): what every message record's key starts with (checked for each record read).
  const std::string message_prefix_;
};

}  // namespace herald::broker
