// Numeric socket addresses ("127.0.0.1:1883", "[::1]:8081", ":1883" for all IPv4 interfaces).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace herald::net {

class SocketAddress {
 public:
  SocketAddress() = default;
  // Parses "host:port" where host is a numeric IPv4 address, a bracketed IPv6 address, or empty
  // (meaning 0.0.0.0). Host names are not resolved here.
  static absl::StatusOr<SocketAddress> Parse(std::string_view text);
  static SocketAddress FromSockaddr(const sockaddr* sa);

  const sockaddr* sockaddr_ptr() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t length() const;
  int family() const { return storage_.ss_family; }
  int port() const;
  SocketAddress WithPort(int port) const;
  // "127.0.0.1:1883" or "[::1]:1883".
  std::string ToString() const;

 private:
  sockaddr_storage storage_{};
};

}  // namespace herald::net
