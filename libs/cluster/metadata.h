// The cluster's metadata (Raft group 0): which core nodes exist, their endpoints and states,
// and where each partition's replicas should be (docs/core.md "Membership and placement").
//
// MetadataStateMachine applies the group's committed MetadataCommands; its one record lives in
// the partition column family under the reserved prefix of group 0 (GroupStatePrefix), so the
// snapshot code streams it like a partition. NodeDirectory is the thread-safe view of the
// applied metadata that the rest of the node reads (addresses, assignments).
#pragma once

#include <rocksdb/write_batch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "herald/v1/partition.pb.h"
#include "libs/raft/types.h"
#include "libs/storage/engine.h"

namespace herald::cluster {

inline constexpr uint64_t kMetadataGroup = 0;

// Prefix of every key of a group's state machine in the partition column family: partition p's
// group (p + 1) uses [p u32]; the metadata group uses [0xffffffff].
std::string GroupStatePrefix(uint64_t group);

class MetadataStateMachine {
 public:
  static absl::StatusOr<std::unique_ptr<MetadataStateMachine>> Open(storage::Engine& engine);

  // Applies a committed MetadataCommand; DataLoss if it does not parse (the host stops).
  absl::Status Apply(uint64_t index, std::string_view data, rocksdb::WriteBatch* batch);
  void ApplyOther(uint64_t index, rocksdb::WriteBatch* batch);
  void ApplyConf(uint64_t index, const std::vector<uint64_t>& voters,
                 const std::vector<uint64_t>& learners, rocksdb::WriteBatch* batch);

  uint64_t applied_index() const { return state_.applied_index(); }
  const v1::MetadataStateRecord& state() const { return state_; }

 private:
  explicit MetadataStateMachine(storage::Engine& engine) : engine_(engine) {}
  void Stage(rocksdb::WriteBatch* batch);

  storage::Engine& engine_;
  v1::MetadataStateRecord state_;
};

// "host:port" of an endpoint.
std::string EndpointAddress(const v1::Endpoint& e);
// Parses "host:port" ("[v6]:port" gives the host without brackets); InvalidArgument when it is
// not one.
absl::StatusOr<v1::Endpoint> ParseEndpoint(std::string_view address);

// The applied metadata as the node's services read it. Thread-safe.
class NodeDirectory {
 public:
  NodeDirectory() = default;
  // Static addresses (tests, and a node before its metadata group has applied anything).
  explicit NodeDirectory(std::map<raft::NodeId, std::string> addresses);

  // Replaces the view with `record` if it is newer than the current one.
  void Update(const v1::MetadataStateRecord& record);

  // Learns an address before the metadata says it (a joining node, from AddNodeResponse).
  void AddAddress(raft::NodeId node, std::string address);
  std::optional<std::string> Address(raft::NodeId node) const;
  std::map<raft::NodeId, std::string> Addresses() const;
  // Assigned replicas of `partition` (empty when unknown).
  std::vector<raft::NodeId> Replicas(uint32_t partition) const;
  // The whole applied record (empty before the metadata group applied anything).
  v1::MetadataStateRecord Record() const;
  uint64_t version() const;

 private:
  mutable std::mutex mu_;
  std::map<raft::NodeId, std::string> addresses_ ABSL_GUARDED_BY(mu_);
  v1::MetadataStateRecord record_ ABSL_GUARDED_BY(mu_);
};

}  // namespace herald::cluster
