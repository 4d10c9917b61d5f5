// Key and value layouts of the storage column families. Integers are big-endian so that
// RocksDB's byte order is numeric order.
//
//   raft_log:   [group u64][index u64]            -> [term u64][type u8][data...]
//   raft_state: [group u64]['h']                  -> [term u64][vote u64][commit u64]
//               [group u64]['s']                  -> snapshot: [index u64][term u64]
//                                                    [nvoters u32][voters u64...]
//                                                    [nlearners u32][learners u64...][data...]
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "libs/raft/types.h"

namespace herald::storage {

void PutU64(std::string* out, uint64_t v);
void PutU32(std::string* out, uint32_t v);
// Reads a big-endian integer from the front of `in` and advances it; false if too short.
bool GetU64(std::string_view* in, uint64_t* v);
bool GetU32(std::string_view* in, uint32_t* v);

std::string RaftLogKey(uint64_t group, uint64_t index);
// Decodes the index from a raft_log key.
uint64_t RaftLogKeyIndex(std::string_view key);
std::string RaftStateKey(uint64_t group, char kind);

// A log entry's value: [term u64][type u8][data]. The header alone is what a writer puts
// before the data without copying it (rocksdb::SliceParts).
inline constexpr size_t kEntryHeaderBytes = 9;
void EncodeEntryHeader(const raft::Entry& e, char out[kEntryHeaderBytes]);
std::string EncodeEntryValue(const raft::Entry& e);
absl::StatusOr<raft::Entry> DecodeEntryValue(uint64_t index, std::string_view value);

std::string EncodeHardState(const raft::HardState& hs);
absl::StatusOr<raft::HardState> DecodeHardState(std::string_view value);

std::string EncodeSnapshot(const raft::Snapshot& s);
absl::StatusOr<raft::Snapshot> DecodeSnapshot(std::string_view value);

}  // namespace herald::storage
