#include "libs/storage/keys.h"

namespace herald::storage {

void PutU64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(b, 8);
}

void PutU32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 3; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(b, 4);
}

bool GetU64(std::string_view* in, uint64_t* v) {
  if (in->size() < 8) return false;
  uint64_t r = 0;
  for (int i = 0; i < 8; ++i) r = (r << 8) | static_cast<uint8_t>((*in)[i]);
  in->remove_prefix(8);
  *v = r;
  return true;
}

bool GetU32(std::string_view* in, uint32_t* v) {
  if (in->size() < 4) return false;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r = (r << 8) | static_cast<uint8_t>((*in)[i]);
  in->remove_prefix(4);
  *v = r;
  return true;
}

std::string RaftLogKey(uint64_t group, uint64_t index) {
  std::string k;
  k.reserve(16);
  PutU64(&k, group);
  PutU64(&k, index);
  return k;
}

uint64_t RaftLogKeyIndex(std::string_view key) {
  key.remove_prefix(8);
  uint64_t index = 0;
  GetU64(&key, &index);
  return index;
}

std::string RaftStateKey(uint64_t group, char kind) {
  std::string k;
  PutU64(&k, group);
  k.push_back(kind);
  return k;
}

void EncodeEntryHeader(const raft::Entry& e, char out[kEntryHeaderBytes]) {
  uint64_t term = e.term;
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(term & 0xff);
    term >>= 8;
  }
  out[8] = static_cast<char>(e.type);
}

std::string EncodeEntryValue(const raft::Entry& e) {
  char header[kEntryHeaderBytes];
  EncodeEntryHeader(e, header);
  std::string v;
  v.reserve(kEntryHeaderBytes + e.data.size());
  v.append(header, kEntryHeaderBytes);
  v.append(e.data);
  return v;
}

absl::StatusOr<raft::Entry> DecodeEntryValue(uint64_t index, std::string_view value) {
  raft::Entry e;
  e.index = index;
  if (!GetU64(&value, &e.term) || value.empty()) {
    return absl::DataLossError("raft log entry value too short");
  }
  uint8_t type = static_cast<uint8_t>(value[0]);
  if (type > static_cast<uint8_t>(raft::EntryType::kConfChange)) {
    return absl::DataLossError("raft log entry has an unknown type");
  }
  e.type = static_cast<raft::EntryType>(type);
  value.remove_prefix(1);
  e.data.assign(value.data(), value.size());
  return e;
}

std::string EncodeHardState(const raft::HardState& hs) {
  std::string v;
  PutU64(&v, hs.term);
  PutU64(&v, hs.vote);
  PutU64(&v, hs.commit);
  return v;
}

absl::StatusOr<raft::HardState> DecodeHardState(std::string_view value) {
  raft::HardState hs;
  if (!GetU64(&value, &hs.term) || !GetU64(&value, &hs.vote) || !GetU64(&value, &hs.commit)) {
    return absl::DataLossError("raft hard state too short");
  }
  return hs;
}

std::string EncodeSnapshot(const raft::Snapshot& s) {
  std::string v;
  PutU64(&v, s.metadata.index);
  PutU64(&v, s.metadata.term);
  PutU32(&v, static_cast<uint32_t>(s.metadata.conf_state.voters.size()));
  for (auto id : s.metadata.conf_state.voters) PutU64(&v, id);
  PutU32(&v, static_cast<uint32_t>(s.metadata.conf_state.learners.size()));
  for (auto id : s.metadata.conf_state.learners) PutU64(&v, id);
  v.append(s.data);
  return v;
}

absl::StatusOr<raft::Snapshot> DecodeSnapshot(std::string_view value) {
  raft::Snapshot s;
  uint32_t n = 0;
  if (!GetU64(&value, &s.metadata.index) || !GetU64(&value, &s.metadata.term) ||
      !GetU32(&value, &n)) {
    return absl::DataLossError("raft snapshot record too short");
  }
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t id;
    if (!GetU64(&value, &id)) return absl::DataLossError("raft snapshot voters truncated");
    s.metadata.conf_state.voters.push_back(id);
  }
  if (!GetU32(&value, &n)) return absl::DataLossError("raft snapshot record too short");
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t id;
    if (!GetU64(&value, &id)) return absl::DataLossError("raft snapshot learners truncated");
    s.metadata.conf_state.learners.push_back(id);
  }
  s.data.assign(value.data(), value.size());
  return s;
}

}  // namespace herald::storage
