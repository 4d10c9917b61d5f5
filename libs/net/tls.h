// TLS through OpenSSL memory BIOs: the socket is libuv's, OpenSSL only transforms bytes.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace herald::net {

struct TlsServerOptions {
  std::string cert_file;  // PEM certificate chain
  std::string key_file;   // PEM private key
  // PEM CA bundle; when set, clients must present a certificate signed by it (mutual TLS).
  std::string client_ca_file;
};

struct TlsClientOptions {
  std::string ca_file;  // PEM CA bundle to verify the server; empty: system default paths
  bool verify_peer = true;
  std::string cert_file;  // optional client certificate (mutual TLS)
  std::string key_file;
};

// An SSL_CTX. Immutable after creation and shared by every connection that uses it.
class TlsContext {
 public:
  static absl::StatusOr<std::shared_ptr<TlsContext>> NewServer(const TlsServerOptions& options);
  static absl::StatusOr<std::shared_ptr<TlsContext>> NewClient(const TlsClientOptions& options);
  ~TlsContext();

  SSL_CTX* ctx() const { return ctx_; }
  bool is_server() const { return server_; }

 private:
  TlsContext(SSL_CTX* ctx, bool server) : ctx_(ctx), server_(server) {}
  SSL_CTX* ctx_;
  bool server_;
};

// The OpenSSL error queue as text (and cleared), for error messages.
std::string DrainOpenSslErrors();

}  // namespace herald::net
