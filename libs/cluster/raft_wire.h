// Conversion between the Raft core's messages and their wire form (proto/herald/v1/raft.proto).
#pragma once

#include "absl/status/statusor.h"
#include "herald/v1/raft.pb.h"
#include "libs/raft/types.h"

namespace herald::cluster {

// A kSnapshot message carries only the snapshot's metadata inline; snapshot data travels through
// RaftTransport.InstallSnapshot.
// The rvalue forms move entries' data and the context instead of copying them.
void ToProto(const raft::Message& m, v1::RaftMessage* out);
void ToProto(raft::Message&& m, v1::RaftMessage* out);
absl::StatusOr<raft::Message> FromProto(const v1::RaftMessage& m);
absl::StatusOr<raft::Message> FromProto(v1::RaftMessage&& m);

}  // namespace herald::cluster
