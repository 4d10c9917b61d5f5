#include "libs/admin/metrics_registry.h"

namespace herald::admin {

void MetricsRegistry::AddCollector(std::shared_ptr<prometheus::Collectable> collector) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collector));
}

std::vector<prometheus::MetricFamily> MetricsRegistry::Collect() const {
  std::vector<prometheus::MetricFamily> out = families_->Collect();
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : collectors_) {
    auto more = c->Collect();
    out.insert(out.end(), std::make_move_iterator(more.begin()),
               std::make_move_iterator(more.end()));
  }
  return out;
}

}  // namespace herald::admin
