#include "libs/cluster/core_metrics.h"

#include <algorithm>
#include <prometheus/metric_family.h>

namespace herald::cluster {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const std::string& name, const std::string& help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

void Add(MetricFamily& f, double v, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  f.metric.push_back(std::move(m));
}

const char* RoleLabel(raft::Role r) {
  switch (r) {
    case raft::Role::kLeader:
      return "leader";
    case raft::Role::kCandidate:
      return "candidate";
    case raft::Role::kPreCandidate:
      return "pre_candidate";
    case raft::Role::kFollower:
      return "follower";
  }
  return "unknown";
}

class CoreCollector : public prometheus::Collectable {
 public:
  explicit CoreCollector(std::shared_ptr<CoreMetricsSource> source) : source_(std::move(source)) {}

  std::vector<MetricFamily> Collect() const override {
    std::lock_guard<std::mutex> l(source_->mu);
    if (source_->host == nullptr) return {};
    RaftHost& host = *source_->host;
    std::vector<GroupStatus> groups = host.Status();

    auto roles =
        Family("herald_raft_groups", "Raft groups on this node by role.", MetricType::Gauge);
    std::map<std::string, int> by_role = {
        {"leader", 0}, {"follower", 0}, {"candidate", 0}, {"pre_candidate", 0}};
    auto term = Family("herald_raft_term", "Current Raft term per group.", MetricType::Gauge);
    auto commit_lag = Family("herald_raft_apply_lag_entries",
                             "Committed entries not yet applied, per group.", MetricType::Gauge);
    auto append_lag = Family("herald_raft_commit_lag_entries",
                             "Appended entries not yet committed, per group.", MetricType::Gauge);
    auto stored =
        Family("herald_partition_messages", "Messages stored per partition.", MetricType::Gauge);
    auto bytes = Family("herald_partition_bytes", "Serialized message bytes stored per partition.",
                        MetricType::Gauge);
    auto offset =
        Family("herald_partition_last_offset", "Offset of the newest message.", MetricType::Gauge);
    auto trimmed = Family("herald_partition_trimmed_messages_total",
                          "Messages removed by retention per partition.", MetricType::Counter);
    for (const GroupStatus& g : groups) {
      ++by_role[RoleLabel(g.role)];
      std::vector<ClientMetric::Label> gl = {{"group", std::to_string(g.group)}};
      Add(term, static_cast<double>(g.term), gl);
      Add(commit_lag, static_cast<double>(g.commit - std::min(g.commit, g.applied)), gl);
      Add(append_lag, static_cast<double>(g.last_index - std::min(g.last_index, g.commit)), gl);
      // Partition figures are exported by the leader only, so sums across nodes stay right.
      if (g.role != raft::Role::kLeader) continue;
      std::vector<ClientMetric::Label> pl = {{"partition", std::to_string(g.partition)}};
      Add(stored, static_cast<double>(g.stored_messages), pl);
      Add(bytes, static_cast<double>(g.stored_bytes), pl);
      Add(offset, static_cast<double>(g.last_offset), pl);
      Add(trimmed, static_cast<double>(g.trimmed_messages), pl);
    }
    for (const auto& [role, n] : by_role) Add(roles, n, {{"role", role}});
    auto quiesced = Family("herald_raft_quiesced_groups",
                           "Replicas on this node that are idle and not ticking.",
                           MetricType::Gauge);
    Add(quiesced, static_cast<double>(std::count_if(
                      groups.begin(), groups.end(), [](const GroupStatus& g) { return g.quiesced; })));

    const RaftHostStats& s = host.stats();
    auto counter = [](const std::string& name, const std::string& help, uint64_t v) {
      auto f = Family(name, help, MetricType::Counter);
      Add(f, static_cast<double>(v));
      return f;
    };
    std::vector<MetricFamily> out = {roles, term,   commit_lag, append_lag, stored,
                                     bytes, offset, trimmed,    quiesced};
    out.push_back(counter("herald_raft_messages_sent_total",
                          "Raft messages sent to other nodes (heartbeats included).",
                          s.messages_sent.load()));
    out.push_back(counter("herald_raft_leader_changes_total",
                          "Changes of a group's leader observed by this node.",
                          s.leader_changes.load()));
    out.push_back(
        counter("herald_raft_proposals_total", "Proposals received.", s.proposals.load()));
    out.push_back(counter("herald_raft_proposals_refused_total",
                          "Proposals refused (not leader, overloaded).",
                          s.proposals_refused.load()));
    out.push_back(counter("herald_raft_entries_applied_total", "Committed entries applied.",
                          s.entries_applied.load()));
    out.push_back(counter("herald_storage_write_batches_total",
                          "Group-commit write batches.", s.write_batches.load()));
    out.push_back(counter("herald_storage_syncs_total",
                          "Write-ahead log fsyncs of group-commit batches (one covers every "
                          "batch written before it).",
                          s.syncs.load()));
    auto secs =
        Family("herald_storage_write_seconds_total",
               "Time spent writing group-commit batches, fsync included.", MetricType::Counter);
    Add(secs, static_cast<double>(s.write_nanos.load()) / 1e9);
    out.push_back(secs);
    if (source_->engine != nullptr) {
      auto size = Family("herald_storage_bytes",
                         "RocksDB size per column family (SST and memtables).", MetricType::Gauge);
      for (int i = 0; i < storage::kFamilyCount; ++i) {
        auto f = static_cast<storage::Family>(i);
        Add(size, static_cast<double>(source_->engine->ApproximateSize(f)),
            {{"family", storage::FamilyName(f)}});
      }
      out.push_back(size);
    }
    return out;
  }

 private:
  std::shared_ptr<CoreMetricsSource> source_;
};

}  // namespace

std::shared_ptr<prometheus::Collectable> NewCoreCollector(
    std::shared_ptr<CoreMetricsSource> source) {
  return std::make_shared<CoreCollector>(std::move(source));
}

}  // namespace herald::cluster
