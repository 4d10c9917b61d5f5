// herald-core: a core node (Raft-replicated topic partitions). Today it runs the process
// skeleton: configuration, event loops and the admin endpoint.
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::service::ServiceSpec spec;
  spec.component = "herald-core";
  spec.usage =
      "herald-core: a Herald core node.\n"
      "usage: herald-core [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8083";
  spec.default_data_dir = "var/core";
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
