// The core as the edge's client protocols see it: publish, keep a topic filter delivered, read
// history and retained messages, and keep MQTT persistent sessions.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "herald/v1/broker.pb.h"
#include "herald/v1/common.pb.h"

namespace herald::edge {

// The answer to a retained lookup.
struct RetainedMessages {
  // One per topic, sorted by topic, each with its partition and offset.
  std::vector<v1::Message> messages;
  // Per partition of `messages`: this edge's LivePosition offset when the lookup completed, if
  // it is in the epoch the lookup read. Live deliveries of the messages at or before it were
  // handed to the delivery callback before `done` runs; a message after it is delivered live
  // to every subscription applied before the lookup started. Absent: unknown.
  std::map<uint32_t, uint64_t> live_through;
  // Per partition of `messages`: the epoch of their offsets (absent when pages of one partition
  // were read in different epochs).
  std::map<uint32_t, uint64_t> epochs;
};

// What the MQTT server needs from the core (CoreClient implements it; tests fake it). Every
// method is thread-safe; callbacks may run on any thread and must not block.
//
// Errors of the session methods: FAILED_PRECONDITION when the caller's owner epoch is stale (the
// session was taken over: ErrorCode FENCED), NOT_FOUND when the session no longer exists,
// UNAVAILABLE / DEADLINE_EXCEEDED when the core could not be reached in time (outcome unknown;
// every session mutation is idempotent, so it may be retried).
class CoreApi {
 public:
  virtual ~CoreApi() = default;
  // Publishes `messages`; `done` runs once with OK when every one is committed.
  virtual void Publish(std::vector<v1::Message> messages,
                       std::function<void(const absl::Status&)> done) = 0;
  // Adds a reference to a topic filter; `applied` runs once messages committed from then on
  // are delivered for it.
  virtual void AddFilter(const std::string& filter, std::function<void()> applied) = 0;
  virtual void RemoveFilter(const std::string& filter) = 0;

  // The cluster's partition count.
  virtual uint32_t partitions() const = 0;
  // How far live delivery of `partition` has been evaluated on this edge (every message at or
  // before it that matches an applied filter was handed to the delivery callback); nullopt when
  // the partition has not been read yet.
  virtual std::optional<v1::PartitionPosition> LivePosition(uint32_t partition) = 0;

  // Reads committed messages of `partition` after `after` matching `filters` (at most
  // `max_messages`), from the partition's leader. OUT_OF_RANGE when `after` names a position
  // that can no longer be read (cursor invalid, or its epoch was reset).
  virtual void Fetch(uint32_t partition, const v1::PartitionPosition& after,
                     std::vector<std::string> filters, uint32_t max_messages,
                     std::function<void(absl::StatusOr<v1::FetchResult>)> done) = 0;
  // Every retained message matching `filters`, from all partitions (at most `max_messages`).
  virtual void GetRetained(std::vector<std::string> filters, uint32_t max_messages,
                           std::function<void(absl::StatusOr<RetainedMessages>)> done) = 0;

  // MQTT persistent sessions (broker.proto), routed to the leader of the session's partition.
  // An opened session's lease is renewed by the implementation until CloseSession or until a
  // mutation fails with FAILED_PRECONDITION / NOT_FOUND.
  virtual void OpenSession(v1::OpenSessionRequest request,
                           std::function<void(absl::StatusOr<v1::OpenSessionResponse>)> done) = 0;
  virtual void UpdateSession(v1::SessionUpdate update,
                             std::function<void(const absl::Status&)> done) = 0;
  virtual void CloseSession(v1::CloseSessionRequest request,
                            std::function<void(const absl::Status&)> done) = 0;
  // The stored session of `client_id`; NOT_FOUND when there is none.
  virtual void GetSession(const std::string& client_id,
                          std::function<void(absl::StatusOr<v1::Session>)> done) = 0;
};

}  // namespace herald::edge
