// herald-edge: a stateless edge node: the MQTT listener in front of the core nodes named by
// edge.core.
#include <memory>

#include "libs/admin/process_metrics.h"
#include "libs/edge/edge.h"
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::edge::EdgeConfig config;
  std::unique_ptr<herald::edge::Edge> edge;

  herald::service::ServiceSpec spec;
  spec.component = "herald-edge";
  spec.usage =
      "herald-edge: a Herald edge node.\n"
      "usage: herald-edge [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8082";
  spec.add_options = [&](herald::ConfigSchema& schema) {
    config.AddOptions(schema, /*standalone=*/true);
  };
  spec.start = [&](herald::service::ServiceContext& ctx) {
    edge = std::make_unique<herald::edge::Edge>(config);
    if (absl::Status s = edge->Start(ctx.loops); !s.ok()) return s;
    herald::admin::RegisterConnectionMetrics(ctx.metrics, "mqtt", edge->mqtt_stats());
    return absl::OkStatus();
  };
  spec.stop = [&] { edge.reset(); };
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
