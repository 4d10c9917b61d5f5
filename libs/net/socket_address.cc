#include "libs/net/socket_address.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "libs/common/strings.h"

namespace herald::net {

absl::StatusOr<SocketAddress> SocketAddress::Parse(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(StrCat("address '", text, "' has no port (host:port)"));
  }
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  int port = -1;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(StrCat("address '", text, "' has an invalid port"));
  }
  SocketAddress a;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    std::string h(host.substr(1, host.size() - 2));
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, h.c_str(), &sin6->sin6_addr) != 1) {
      return absl::InvalidArgumentError(StrCat("address '", text, "': bad IPv6 host"));
    }
    return a;
  }
  std::string h = host.empty() ? "0.0.0.0" : std::string(host);
  auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage_);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, h.c_str(), &sin->sin_addr) != 1) {
    return absl::InvalidArgumentError(
        StrCat("address '", text, "': host must be a numeric IPv4 or [IPv6] address"));
  }
  return a;
}

SocketAddress SocketAddress::FromSockaddr(const sockaddr* sa) {
  SocketAddress a;
  if (sa->sa_family == AF_INET) {
    std::memcpy(&a.storage_, sa, sizeof(sockaddr_in));
  } else if (sa->sa_family == AF_INET6) {
    std::memcpy(&a.storage_, sa, sizeof(sockaddr_in6));
  }
  return a;
}

socklen_t SocketAddress::length() const {
  return family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

int SocketAddress::port() const {
  if (family() == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  return 0;
}

SocketAddress SocketAddress::WithPort(int port) const {
  SocketAddress a = *this;
  if (family() == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&a.storage_)->sin6_port = htons(static_cast<uint16_t>(port));
  } else {
    reinterpret_cast<sockaddr_in*>(&a.storage_)->sin_port = htons(static_cast<uint16_t>(port));
  }
  return a;
}

std::string SocketAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf,
              sizeof(buf));
    return StrCat("[", buf, "]:", port());
  }
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf,
              sizeof(buf));
    return StrCat(buf, ":", port());
  }
  return "(unspecified)";
}

}  // namespace herald::net
