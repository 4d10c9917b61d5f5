// Process metrics in the names Prometheus clients share (process_cpu_seconds_total,
// process_resident_memory_bytes, ...), read from /proc/self on each scrape, and
// herald_build_info.
#pragma once

#include <memory>
#include <string>

#include "libs/admin/metrics_registry.h"
#include "libs/net/connection.h"

namespace herald::admin {

// Registers the process collector and herald_build_info{component,version,revision} = 1.
void RegisterProcessMetrics(MetricsRegistry& registry, const std::string& component);

// Exposes a listener's connection counters as herald_connections_* with label
// listener=<name>. `stats` must outlive the registry's use of it (it is shared).
void RegisterConnectionMetrics(MetricsRegistry& registry, const std::string& name,
                               std::shared_ptr<const net::ConnectionStats> stats);

}  // namespace herald::admin
