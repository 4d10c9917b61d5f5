// Every metric a process exports: prometheus-cpp families (counters, gauges, histograms built on
// `families()`) plus collectors computed at scrape time (process and connection statistics).
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/registry.h>

#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace herald::admin {

class MetricsRegistry final : public prometheus::Collectable {
 public:
  MetricsRegistry() : families_(std::make_shared<prometheus::Registry>()) {}

  // Where libraries build their metric families. Thread-safe.
  prometheus::Registry& families() { return *families_; }
  // Adds a collector that is asked for its metrics on every scrape. Thread-safe.
  void AddCollector(std::shared_ptr<prometheus::Collectable> collector);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::shared_ptr<prometheus::Registry> families_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace herald::admin
