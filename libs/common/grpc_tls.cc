#include "libs/common/grpc_tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "libs/common/strings.h"

namespace herald {
namespace {

struct Pem {
  std::string cert, key, ca;
};

absl::StatusOr<std::string> ReadPemFile(const std::string& option, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        StrCat(option, ": cannot read '", path, "': ", std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(StrCat(option, ": '", path, "' holds no PEM block"));
  }
  return text;
}

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "not a valid PEM object";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

// Parses the three PEM texts so that a wrong file is refused at startup with its option's name,
// not later as a failed handshake; checks that the key belongs to the certificate.
absl::Status CheckPem(const GrpcTlsConfig& c, const Pem& pem) {
  ERR_clear_error();
  BIO* cert_bio = BIO_new_mem_buf(pem.cert.data(), static_cast<int>(pem.cert.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  BIO_free(cert_bio);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        StrCat(c.cert_option, ": '", c.cert_file, "': ", OpenSslError()));
  }
  BIO* key_bio = BIO_new_mem_buf(pem.key.data(), static_cast<int>(pem.key.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  BIO_free(key_bio);
  absl::Status status;
  if (key == nullptr) {
    status =
        absl::InvalidArgumentError(StrCat(c.key_option, ": '", c.key_file, "': ", OpenSslError()));
  } else if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    status =
        absl::InvalidArgumentError(StrCat(c.key_option, ": '", c.key_file, "' is not the key of ",
                                          c.cert_option, " '", c.cert_file, "'"));
  }
  EVP_PKEY_free(key);
  X509_free(cert);
  if (!status.ok()) return status;
  BIO* ca_bio = BIO_new_mem_buf(pem.ca.data(), static_cast<int>(pem.ca.size()));
  X509* ca = PEM_read_bio_X509(ca_bio, nullptr, nullptr, nullptr);
  BIO_free(ca_bio);
  if (ca == nullptr) {
    return absl::InvalidArgumentError(StrCat(c.ca_option, ": '", c.ca_file, "': ", OpenSslError()));
  }
  X509_free(ca);
  return absl::OkStatus();
}

absl::StatusOr<Pem> LoadPem(const GrpcTlsConfig& c) {
  if (absl::Status s = c.Check(); !s.ok()) return s;
  Pem pem;
  auto cert = ReadPemFile(c.cert_option, c.cert_file);
  if (!cert.ok()) return cert.status();
  auto key = ReadPemFile(c.key_option, c.key_file);
  if (!key.ok()) return key.status();
  auto ca = ReadPemFile(c.ca_option, c.ca_file);
  if (!ca.ok()) return ca.status();
  pem.cert = std::move(*cert);
  pem.key = std::move(*key);
  pem.ca = std::move(*ca);
  if (absl::Status s = CheckPem(c, pem); !s.ok()) return s;
  return pem;
}

}  // namespace

void GrpcTlsConfig::AddOptions(ConfigSchema& schema) {
  schema.Add("grpc.tls.cert_file", &cert_file,
             "PEM certificate chain this process presents on gRPC links between Herald "
             "processes (as server and as client); with grpc.tls.key_file and grpc.tls.ca_file: "
             "mutual TLS, else plaintext.");
  schema.Add("grpc.tls.key_file", &key_file, "PEM private key for grpc.tls.cert_file.");
  schema.Add("grpc.tls.ca_file", &ca_file,
             "PEM CA certificate(s) that every peer's gRPC certificate must chain to.");
}

absl::Status GrpcTlsConfig::Check() const {
  if (!enabled() || (!cert_file.empty() && !key_file.empty() && !ca_file.empty())) {
    return absl::OkStatus();
  }
  std::string missing;
  for (const auto& [name, value] :
       {std::pair{&cert_option, &cert_file}, std::pair{&key_option, &key_file},
        std::pair{&ca_option, &ca_file}}) {
    if (value->empty()) missing += StrCat(missing.empty() ? "" : ", ", *name);
  }
  return absl::InvalidArgumentError(StrCat(cert_option, ", ", key_option, " and ", ca_option,
                                           " must be set together (or none, for plaintext "
                                           "gRPC); missing: ",
                                           missing));
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> GrpcTlsConfig::ChannelCredentials()
    const {
  if (absl::Status s = Check(); !s.ok()) return s;
  if (!enabled()) return grpc::InsecureChannelCredentials();
  auto pem = LoadPem(*this);
  if (!pem.ok()) return pem.status();
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = std::move(pem->ca);
  o.pem_private_key = std::move(pem->key);
  o.pem_cert_chain = std::move(pem->cert);
  return grpc::SslCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcTlsConfig::ServerCredentials() const {
  if (absl::Status s = Check(); !s.ok()) return s;
  if (!enabled()) return grpc::InsecureServerCredentials();
  auto pem = LoadPem(*this);
  if (!pem.ok()) return pem.status();
  grpc::SslServerCredentialsOptions o(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  o.pem_root_certs = std::move(pem->ca);
  o.pem_key_cert_pairs.push_back({std::move(pem->key), std::move(pem->cert)});
  return grpc::SslServerCredentials(o);
}

}  // namespace herald
