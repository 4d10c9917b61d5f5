#include "libs/cluster/metadata.h"

#include <algorithm>
#include <charconv>

#include "libs/common/strings.h"
#include "libs/storage/keys.h"

namespace herald::cluster {

std::string GroupStatePrefix(uint64_t group) {
  std::string k;
  storage::PutU32(&k, group == kMetadataGroup ? 0xffffffffu : static_cast<uint32_t>(group - 1));
  return k;
}

namespace {

std::string MetadataKey() { return GroupStatePrefix(kMetadataGroup) + "S"; }

void SortNodes(v1::MetadataStateRecord* r) {
  std::sort(r->mutable_nodes()->begin(), r->mutable_nodes()->end(),
            [](const v1::NodeInfo& a, const v1::NodeInfo& b) { return a.node_id() < b.node_id(); });
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetadataStateMachine>> MetadataStateMachine::Open(
    storage::Engine& engine) {
  std::unique_ptr<MetadataStateMachine> m(new MetadataStateMachine(engine));
  auto v = engine.Get(storage::Family::kPartition, MetadataKey());
  if (!v.ok()) return v.status();
  if (v->has_value() && !m->state_.ParseFromString(**v)) {
    return absl::DataLossError("metadata group: state record is corrupt");
  }
  return m;
}

void MetadataStateMachine::Stage(rocksdb::WriteBatch* batch) {
  batch->Put(engine_.handle(storage::Family::kPartition), MetadataKey(),
             state_.SerializeAsString());
}

void MetadataStateMachine::ApplyOther(uint64_t index, rocksdb::WriteBatch* batch) {
  if (index <= state_.applied_index()) return;
  state_.set_applied_index(index);
  Stage(batch);
}

void MetadataStateMachine::ApplyConf(uint64_t index, const std::vector<uint64_t>& voters,
                                     const std::vector<uint64_t>& learners,
                                     rocksdb::WriteBatch* batch) {
  if (index <= state_.applied_index()) return;
  state_.set_applied_index(index);
  state_.mutable_conf_voters()->Assign(voters.begin(), voters.end());
  state_.mutable_conf_learners()->Assign(learners.begin(), learners.end());
  state_.set_conf_index(index);
  Stage(batch);
}

absl::Status MetadataStateMachine::Apply(uint64_t index, std::string_view data,
                                         rocksdb::WriteBatch* batch) {
  if (index <= state_.applied_index()) return absl::OkStatus();
  v1::MetadataCommand cmd;
  if (!cmd.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return absl::DataLossError(StrCat("metadata entry ", index, " is not a metadata command"));
  }
  auto find = [this](uint64_t id) -> v1::NodeInfo* {
    for (v1::NodeInfo& n : *state_.mutable_nodes()) {
      if (n.node_id() == id) return &n;
    }
    return nullptr;
  };
  switch (cmd.command_case()) {
    case v1::MetadataCommand::kInit:
      if (!state_.initialized()) {
        state_.set_initialized(true);
        *state_.mutable_nodes() = cmd.init().nodes();
        for (v1::NodeInfo& n : *state_.mutable_nodes()) n.set_state(v1::NODE_STATE_ACTIVE);
        *state_.mutable_assignments() = cmd.init().assignments();
        SortNodes(&state_);
      }
      break;
    case v1::MetadataCommand::kAddNode: {
      const v1::NodeInfo& add = cmd.add_node();
      if (add.node_id() == 0 || !state_.initialized()) break;
      v1::NodeInfo* n = find(add.node_id());
      if (n == nullptr) {
        v1::NodeInfo* added = state_.add_nodes();
        *added = add;
        added->set_state(v1::NODE_STATE_ACTIVE);
        SortNodes(&state_);
      }
      break;
    }
    case v1::MetadataCommand::kSetNodeState:
      if (v1::NodeInfo* n = find(cmd.set_node_state().node_id()); n != nullptr) {
        n->set_state(cmd.set_node_state().state());
      }
      break;
    case v1::MetadataCommand::kForgetNode: {
      auto* nodes = state_.mutable_nodes();
      for (int i = 0; i < nodes->size(); ++i) {
        if (nodes->Get(i).node_id() == cmd.forget_node()) {
          nodes->DeleteSubrange(i, 1);
          break;
        }
      }
      break;
    }
    case v1::MetadataCommand::kAssign:
      for (const v1::PartitionAssignment& a : cmd.assign().assignments()) {
        if (static_cast<int>(a.partition()) < state_.assignments_size()) {
          *state_.mutable_assignments(static_cast<int>(a.partition())) = a;
        }
      }
      break;
    case v1::MetadataCommand::COMMAND_NOT_SET:
      break;
  }
  state_.set_applied_index(index);
  Stage(batch);
  return absl::OkStatus();
}

std::string EndpointAddress(const v1::Endpoint& e) {
  // Endpoint.host holds an IPv6 literal without brackets; an address needs them.
  if (e.host().find(':') != std::string::npos) return StrCat("[", e.host(), "]:", e.port());
  return StrCat(e.host(), ":", e.port());
}

absl::StatusOr<v1::Endpoint> ParseEndpoint(std::string_view address) {
  size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string_view::npos || colon == 0 ||
      std::from_chars(address.data() + colon + 1, address.data() + address.size(), port).ec !=
          std::errc() ||
      port == 0 || port > 65535) {
    return absl::InvalidArgumentError(StrCat("'", address, "' is not host:port"));
  }
  std::string_view host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // Endpoint.host: IPv6 without brackets
  }
  v1::Endpoint e;
  e.set_host(std::string(host));
  e.set_port(port);
  return e;
}

NodeDirectory::NodeDirectory(std::map<raft::NodeId, std::string> addresses)
    : addresses_(std::move(addresses)) {}

void NodeDirectory::Update(const v1::MetadataStateRecord& record) {
  std::lock_guard<std::mutex> l(mu_);
  if (record.applied_index() < record_.applied_index() || !record.initialized()) return;
  record_ = record;
  // Nodes forgotten by the metadata keep their address: replicas still being moved away from
  // them may need it for a while.
  for (const v1::NodeInfo& n : record.nodes()) {
    addresses_[n.node_id()] = EndpointAddress(n.peer_endpoint());
  }
}

void NodeDirectory::AddAddress(raft::NodeId node, std::string address) {
  std::lock_guard<std::mutex> l(mu_);
  addresses_.emplace(node, std::move(address));
}

std::optional<std::string> NodeDirectory::Address(raft::NodeId node) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = addresses_.find(node);
  if (it == addresses_.end()) return std::nullopt;
  return it->second;
}

std::map<raft::NodeId, std::string> NodeDirectory::Addresses() const {
  std::lock_guard<std::mutex> l(mu_);
  return addresses_;
}

std::vector<raft::NodeId> NodeDirectory::Replicas(uint32_t partition) const {
  std::lock_guard<std::mutex> l(mu_);
  if (partition >= static_cast<uint32_t>(record_.assignments_size())) return {};
  const auto& r = record_.assignments(static_cast<int>(partition)).replicas();
  return {r.begin(), r.end()};
}

v1::MetadataStateRecord NodeDirectory::Record() const {
  std::lock_guard<std::mutex> l(mu_);
  return record_;
}

uint64_t NodeDirectory::version() const {
  std::lock_guard<std::mutex> l(mu_);
  return record_.applied_index();
}

}  // namespace herald::cluster
