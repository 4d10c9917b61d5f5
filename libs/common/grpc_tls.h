// Mutual TLS for the gRPC links between Herald processes (core <-> core Raft transport and will
// forwarding, edge -> core Broker API, heraldctl -> core): one certificate/key pair per process
// and one CA that every peer's certificate must chain to.
//
// With all three files set, a server requires and verifies a client certificate and a client
// presents its own and verifies the server's against the CA, including the host name: the
// server's certificate must carry a subjectAltName for the host (DNS name or IP address) the
// client dials, as written in cluster.peers, edge.core or heraldctl --servers. With none set,
// every link is plaintext (insecure credentials). Setting only some is a configuration error.
//
// The files are read once, when the credentials are built (at startup): replacing a
// certificate takes a restart.
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/common/config.h"

namespace herald {

struct GrpcTlsConfig {
  // PEM files: this process's certificate chain, its private key, and the CA certificate(s)
  // peers' certificates are verified against.
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  // How error messages name the three settings (heraldctl names its --tls-* flags).
  std::string cert_option = "grpc.tls.cert_file";
  std::string key_option = "grpc.tls.key_file";
  std::string ca_option = "grpc.tls.ca_file";

  // Registers grpc.tls.cert_file, grpc.tls.key_file and grpc.tls.ca_file.
  void AddOptions(ConfigSchema& schema);

  // True when any of the three files is set (Check tells whether all are).
  bool enabled() const { return !cert_file.empty() || !key_file.empty() || !ca_file.empty(); }
  // OK when none or all three are set; else InvalidArgument naming the missing options.
  absl::Status Check() const;

  // Client credentials: TLS with the CA as trust root and cert/key as this client's identity
  // when enabled, insecure otherwise. InvalidArgument when the configuration is incomplete or a
  // file cannot be read, does not hold PEM, or the key does not match the certificate.
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials() const;
  // Server credentials: TLS requiring a client certificate verified against the CA when
  // enabled (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY), insecure otherwise.
  // Errors as ChannelCredentials.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials() const;
};

}  // namespace herald
