#include "libs/net/tls.h"

#include <openssl/err.h>

#include "libs/common/strings.h"

namespace herald::net {

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

namespace {

absl::Status LoadCertAndKey(SSL_CTX* ctx, const std::string& cert, const std::string& key) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    return absl::InvalidArgumentError(StrCat("TLS certificate ", cert, ": ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(StrCat("TLS key ", key, ": ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        StrCat("TLS key ", key, " does not match certificate ", cert));
  }
  return absl::OkStatus();
}

void CommonOptions(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Writes go to a memory BIO, which always accepts everything; these keep SSL_write simple.
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
}

}  // namespace

absl::StatusOr<std::shared_ptr<TlsContext>> TlsContext::NewServer(const TlsServerOptions& o) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(DrainOpenSslErrors());
  std::shared_ptr<TlsContext> result(new TlsContext(ctx, true));
  CommonOptions(ctx);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  absl::Status s = LoadCertAndKey(ctx, o.cert_file, o.key_file);
  if (!s.ok()) return s;
  if (!o.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o.client_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          StrCat("TLS client CA ", o.client_ca_file, ": ", DrainOpenSslErrors()));
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return result;
}

absl::StatusOr<std::shared_ptr<TlsContext>> TlsContext::NewClient(const TlsClientOptions& o) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return absl::InternalError(DrainOpenSslErrors());
  std::shared_ptr<TlsContext> result(new TlsContext(ctx, false));
  CommonOptions(ctx);
  if (o.verify_peer) {
    int ok = o.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                               : SSL_CTX_load_verify_locations(ctx, o.ca_file.c_str(), nullptr);
    if (ok != 1) {
      return absl::InvalidArgumentError(StrCat("TLS CA ", o.ca_file, ": ", DrainOpenSslErrors()));
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  if (!o.cert_file.empty()) {
    absl::Status s = LoadCertAndKey(ctx, o.cert_file, o.key_file);
    if (!s.ok()) return s;
  }
  return result;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

}  // namespace herald::net
