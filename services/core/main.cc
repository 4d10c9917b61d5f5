// herald-core: a core node. Hosts replicas of topic partitions (Raft groups persisted in
// RocksDB) and serves the Broker API and the Raft transport over gRPC.
#include <memory>

#include "libs/cluster/core_node.h"
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::cluster::CoreNodeConfig core;
  core.partitions = 64;
  std::unique_ptr<herald::cluster::CoreNode> node;

  herald::service::ServiceSpec spec;
  spec.component = "herald-core";
  spec.usage =
      "herald-core: a Herald core node.\n"
      "usage: herald-core --core.node_id=N --cluster.peers=1=host:port,2=host:port,... "
      "[--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8083";
  spec.default_data_dir = "var/core";
  spec.add_options = [&](herald::ConfigSchema& schema) { core.AddOptions(schema); };
  spec.start = [&](herald::service::ServiceContext& ctx) {
    node = std::make_unique<herald::cluster::CoreNode>(core);
    ctx.metrics.AddCollector(node->metrics_collector());
    return node->Start(ctx.config.data_dir);
  };
  spec.stop = [&] { node.reset(); };
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
