// HTTP/1.1 (RFC 9112) request parsing and response writing, as a pure codec: bytes in,
// requests out; no sockets. Parsing is done by the http-parser library (Debian's
// libhttp-parser); this layer adds Herald's limits and a request value type.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace herald::http {

struct Request {
  std::string method;  // "GET"
  std::string target;  // "/v1/topics/a?since=x" as sent
  std::string path;    // "/v1/topics/a" (not percent-decoded)
  std::string query;   // "since=x"
  int version_major = 1;
  int version_minor = 1;
  std::vector<std::pair<std::string, std::string>> headers;  // in order, names as sent
  std::string body;
  bool keep_alive = true;
  bool upgrade = false;  // "Connection: Upgrade" (e.g. WebSocket); bytes after it are not HTTP

  // The first header with this name (case-insensitive), or nullptr.
  const std::string* Header(std::string_view name) const;
};

struct Limits {
  size_t max_header_bytes = 16 * 1024;  // request line and headers
  size_t max_body_bytes = 1 << 20;
};

// Incremental parser for one connection's requests (pipelining allowed).
class RequestParser {
 public:
  explicit RequestParser(Limits limits = {});
  ~RequestParser();
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Parses `data`; every request completed by it is appended to `out`. After an error the
  // parser is unusable: answer with error_status() and close the connection. After a request
  // with `upgrade` set, the rest of the bytes belong to the new protocol: Feed stops there and
  // `*consumed` (when given) tells how many bytes were HTTP.
  absl::Status Feed(std::string_view data, std::vector<Request>* out, size_t* consumed = nullptr);

  // The HTTP status that answers the last error: 400, 413, 431, 505.
  int error_status() const { return error_status_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int error_status_ = 400;
};

struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// The reason phrase for a status code ("Not Found"); "Unknown" for codes it does not know.
std::string_view StatusText(int status);

// Serializes `response` with Content-Length and Connection headers. `head_only` omits the body
// (answers to HEAD) but keeps its Content-Length.
std::string SerializeResponse(const Response& response, bool keep_alive, bool head_only = false);

}  // namespace herald::http
