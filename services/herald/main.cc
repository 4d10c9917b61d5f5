// herald: the all-in-one broker: one core node (every partition, one replica) and, as they come,
// the edge's client protocols, in one process.
#include <memory>

#include "libs/cluster/core_node.h"
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::cluster::CoreNodeConfig core;
  core.partitions = 8;
  core.replication_factor = 1;
  std::unique_ptr<herald::cluster::CoreNode> node;

  herald::service::ServiceSpec spec;
  spec.component = "herald";
  spec.usage =
      "herald: the all-in-one Herald broker.\n"
      "usage: herald [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8081";
  spec.default_data_dir = "var/herald";
  spec.add_options = [&](herald::ConfigSchema& schema) { core.AddOptions(schema); };
  spec.start = [&](herald::service::ServiceContext& ctx) {
    node = std::make_unique<herald::cluster::CoreNode>(core);
    ctx.metrics.AddCollector(node->metrics_collector());
    return node->Start(ctx.config.data_dir);
  };
  spec.stop = [&] { node.reset(); };
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
