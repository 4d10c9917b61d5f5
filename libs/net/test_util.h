// Helpers for libs/net tests: blocking POSIX client sockets and a self-signed certificate.
#pragma once

#include <chrono>
#include <string>

#include "libs/net/socket_address.h"

namespace herald::net::testing {

// Raises the soft open-files limit to the hard limit (tests open thousands of sockets).
void RaiseFileLimit();

// A blocking client socket with a receive timeout. -1 on failure.
int ConnectBlocking(const SocketAddress& address, int rcvbuf = 0,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10));
bool WriteAll(int fd, std::string_view data);
// Reads exactly n bytes (or until EOF/timeout; then returns what arrived).
std::string ReadExactly(int fd, size_t n);
// Reads until EOF or timeout.
std::string ReadToEof(int fd);

// A temporary directory holding cert.pem and key.pem: an EC P-256 self-signed certificate for
// CN=localhost with subjectAltName DNS:localhost, IP:127.0.0.1. Removed on destruction.
class SelfSignedCert {
 public:
  SelfSignedCert();
  ~SelfSignedCert();
  const std::string& cert_file() const { return cert_; }
  const std::string& key_file() const { return key_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, cert_, key_;
};

}  // namespace herald::net::testing
