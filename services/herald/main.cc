// herald: the all-in-one broker: one core node (every partition, one replica) and the edge's
// client protocols (MQTT), in one process. The edge reaches the core over gRPC on loopback.
#include <memory>
#include <string>

#include "libs/admin/process_metrics.h"
#include "libs/cluster/core_node.h"
#include "libs/edge/edge.h"
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::cluster::CoreNodeConfig core;
  core.partitions = 8;
  core.replication_factor = 1;
  herald::edge::EdgeConfig edge_config;
  std::unique_ptr<herald::cluster::CoreNode> node;
  std::unique_ptr<herald::edge::Edge> edge;

  herald::service::ServiceSpec spec;
  spec.component = "herald";
  spec.usage =
      "herald: the all-in-one Herald broker.\n"
      "usage: herald [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8081";
  spec.default_data_dir = "var/herald";
  spec.add_options = [&](herald::ConfigSchema& schema) {
    core.AddOptions(schema);
    edge_config.AddOptions(schema, /*standalone=*/false);
  };
  spec.start = [&](herald::service::ServiceContext& ctx) {
    node = std::make_unique<herald::cluster::CoreNode>(core);
    ctx.metrics.AddCollector(node->metrics_collector());
    if (absl::Status s = node->Start(ctx.config.data_dir); !s.ok()) return s;
    // A wildcard listen address is dialled on loopback (a certificate names no wildcard).
    std::string core_address = node->address();
    if (core_address.rfind("0.0.0.0:", 0) == 0) {
      core_address = "127.0.0.1" + core_address.substr(7);
    } else if (core_address.rfind("[::]:", 0) == 0) {
      core_address = "[::1]" + core_address.substr(4);
    }
    edge_config.core_addresses = {core_address};
    edge_config.partitions = core.partitions;
    // The edge reaches its own core with the core's certificate (grpc.tls.* is registered once).
    edge_config.grpc_tls = core.grpc_tls;
    edge = std::make_unique<herald::edge::Edge>(edge_config);
    if (absl::Status s = edge->Start(ctx.loops); !s.ok()) return s;
    herald::admin::RegisterConnectionMetrics(ctx.metrics, "mqtt", edge->mqtt_stats());
    return absl::OkStatus();
  };
  spec.stop = [&] {
    edge.reset();
    node.reset();
  };
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
