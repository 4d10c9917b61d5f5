// herald-edge: a stateless edge node (client protocols). Today it runs the process skeleton:
// configuration, event loops and the admin endpoint.
#include "libs/service/service_main.h"

int main(int argc, char** argv, char** envp) {
  herald::service::ServiceSpec spec;
  spec.component = "herald-edge";
  spec.usage =
      "herald-edge: a Herald edge node.\n"
      "usage: herald-edge [--config FILE] [--option=value ...]";
  spec.default_admin_listen = "0.0.0.0:8082";
  return herald::service::ServiceMain(argc, argv, envp, spec);
}
