// Prometheus metrics of a core node: Raft groups (role, term, commit and apply progress, leader
// changes), group-commit writes, partitions (stored messages and bytes, trimmed messages) and
// RocksDB sizes. Collected at scrape time.
#pragma once

#include <prometheus/collectable.h>

#include <memory>
#include <mutex>

#include "libs/cluster/raft_host.h"
#include "libs/storage/engine.h"

namespace herald::cluster {

// What the collector reads; Detach() (under the lock) makes later scrapes export nothing, so a
// scrape racing with the node's shutdown never touches a destroyed host.
struct CoreMetricsSource {
  std::mutex mu;
  RaftHost* host = nullptr;
  storage::Engine* engine = nullptr;
  void Detach() {
    std::lock_guard<std::mutex> l(mu);
    host = nullptr;
    engine = nullptr;
  }
};

std::shared_ptr<prometheus::Collectable> NewCoreCollector(
    std::shared_ptr<CoreMetricsSource> source);

}  // namespace herald::cluster
