// herald: the all-in-one broker (one core node and one edge in one process). Today it runs the
// process skeleton: configuration, event loops and the admin endpoint.
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::service::ServiceSpec spec;
  spec.component = "herald";
  spec.usage =
      "herald: the all-in-one Herald broker.\n"
      "usage: herald [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8081";
  spec.default_data_dir = "var/herald";
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
