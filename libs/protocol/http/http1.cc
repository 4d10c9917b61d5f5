#include "libs/protocol/http/http1.h"

#include <http_parser.h>
#include <strings.h>

#include "libs/common/strings.h"

namespace herald::http {

const std::string* Request::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return &v;
  }
  return nullptr;
}

struct RequestParser::Impl {
  http_parser parser{};
  http_parser_settings settings{};
  Limits limits;
  Request current;
  std::string url;
  bool last_was_value = false;
  size_t header_bytes = 0;
  std::vector<Request>* out = nullptr;
  int error_status = 0;  // set by callbacks that abort the parse
  bool upgraded = false;

  static Impl* From(http_parser* p) { return static_cast<Impl*>(p->data); }

  int CountHeader(size_t n) {
    header_bytes += n;
    if (header_bytes > limits.max_header_bytes) {
      error_status = 431;
      return -1;
    }
    return 0;
  }
};

RequestParser::RequestParser(Limits limits) : impl_(std::make_unique<Impl>()) {
  impl_->limits = limits;
  http_parser_init(&impl_->parser, HTTP_REQUEST);
  impl_->parser.data = impl_.get();
  http_parser_settings& s = impl_->settings;
  http_parser_settings_init(&s);
  s.on_message_begin = [](http_parser* p) {
    Impl* i = Impl::From(p);
    i->current = Request();
    i->url.clear();
    i->last_was_value = false;
    i->header_bytes = 0;
    return 0;
  };
  s.on_url = [](http_parser* p, const char* at, size_t n) {
    Impl* i = Impl::From(p);
    if (i->CountHeader(n) != 0) return -1;
    i->url.append(at, n);
    return 0;
  };
  s.on_header_field = [](http_parser* p, const char* at, size_t n) {
    Impl* i = Impl::From(p);
    if (i->CountHeader(n) != 0) return -1;
    if (i->last_was_value || i->current.headers.empty()) {
      i->current.headers.emplace_back();
      i->last_was_value = false;
    }
    i->current.headers.back().first.append(at, n);
    return 0;
  };
  s.on_header_value = [](http_parser* p, const char* at, size_t n) {
    Impl* i = Impl::From(p);
    if (i->CountHeader(n) != 0) return -1;
    i->last_was_value = true;
    i->current.headers.back().second.append(at, n);
    return 0;
  };
  s.on_headers_complete = [](http_parser* p) {
    Impl* i = Impl::From(p);
    Request& r = i->current;
    if (p->http_major != 1) {
      i->error_status = 505;
      return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > i->limits.max_body_bytes) {
      i->error_status = 413;
      return -1;
    }
    r.method = http_method_str(static_cast<http_method>(p->method));
    r.version_major = p->http_major;
    r.version_minor = p->http_minor;
    r.target = i->url;
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(i->url.data(), i->url.size(), /*is_connect=*/0, &u) != 0) {
      i->error_status = 400;
      return -1;
    }
    if (u.field_set & (1 << UF_PATH)) {
      r.path = i->url.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    } else {
      r.path = "/";
    }
    if (u.field_set & (1 << UF_QUERY)) {
      r.query = i->url.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    }
    return 0;
  };
  s.on_body = [](http_parser* p, const char* at, size_t n) {
    Impl* i = Impl::From(p);
    if (i->current.body.size() + n > i->limits.max_body_bytes) {
      i->error_status = 413;
      return -1;
    }
    i->current.body.append(at, n);
    return 0;
  };
  s.on_message_complete = [](http_parser* p) {
    Impl* i = Impl::From(p);
    i->current.keep_alive = http_should_keep_alive(p) != 0;
    i->current.upgrade = p->upgrade != 0;
    i->out->push_back(std::move(i->current));
    i->current = Request();
    return 0;
  };
}

RequestParser::~RequestParser() = default;

absl::Status RequestParser::Feed(std::string_view data, std::vector<Request>* out,
                                 size_t* consumed) {
  if (impl_->upgraded) {
    return absl::FailedPreconditionError("connection was upgraded; bytes are not HTTP");
  }
  impl_->out = out;
  impl_->error_status = 0;
  size_t n = http_parser_execute(&impl_->parser, &impl_->settings, data.data(), data.size());
  if (consumed != nullptr) *consumed = n;
  if (impl_->parser.upgrade) {
    impl_->upgraded = true;
    return absl::OkStatus();
  }
  auto err = static_cast<http_errno>(impl_->parser.http_errno);
  if (err != HPE_OK) {
    error_status_ = impl_->error_status != 0 ? impl_->error_status : 400;
    if (error_status_ == 431) {
      return absl::ResourceExhaustedError("request headers too large");
    }
    if (error_status_ == 413) return absl::ResourceExhaustedError("request body too large");
    if (error_status_ == 505) return absl::InvalidArgumentError("HTTP version not supported");
    return absl::InvalidArgumentError(
        StrCat("malformed HTTP request: ", http_errno_description(err)));
  }
  return absl::OkStatus();
}

std::string_view StatusText(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string SerializeResponse(const Response& r, bool keep_alive, bool head_only) {
  std::string out = StrCat("HTTP/1.1 ", r.status, " ", StatusText(r.status), "\r\n");
  for (const auto& [k, v] : r.headers) StrAppend(&out, k, ": ", v, "\r\n");
  StrAppend(&out, "Content-Length: ", r.body.size(), "\r\n");
  StrAppend(&out, "Connection: ", keep_alive ? "keep-alive" : "close", "\r\n\r\n");
  if (!head_only) out += r.body;
  return out;
}

}  // namespace herald::http
