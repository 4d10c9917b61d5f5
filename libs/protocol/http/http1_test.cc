#include "libs/protocol/http/http1.h"

#include <gtest/gtest.h>

namespace herald::http {
namespace {

TEST(RequestParserTest, ParsesRequestLineHeadersAndQuery) {
  RequestParser p;
  std::vector<Request> out;
  ASSERT_TRUE(
      p.Feed("GET /metrics?x=1&y=2 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n", &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].method, "GET");
  EXPECT_EQ(out[0].target, "/metrics?x=1&y=2");
  EXPECT_EQ(out[0].path, "/metrics");
  EXPECT_EQ(out[0].query, "x=1&y=2");
  ASSERT_NE(out[0].Header("accept"), nullptr);
  EXPECT_EQ(*out[0].Header("ACCEPT"), "text/plain");
  EXPECT_EQ(out[0].Header("missing"), nullptr);
  EXPECT_TRUE(out[0].keep_alive);
}

TEST(RequestParserTest, ReassemblesARequestFedOneByteAtATime) {
  RequestParser p;
  std::vector<Request> out;
  std::string req =
      "POST /v1/topics/a HTTP/1.1\r\nHost: h\r\nX-Long-Header: abcdefghij\r\n"
      "Content-Length: 11\r\n\r\nhello world";
  for (char c : req) ASSERT_TRUE(p.Feed(std::string_view(&c, 1), &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].body, "hello world");
  EXPECT_EQ(*out[0].Header("x-long-header"), "abcdefghij");
}

TEST(RequestParserTest, PipelinedRequestsAllComeOutInOrder) {
  RequestParser p;
  std::vector<Request> out;
  ASSERT_TRUE(
      p.Feed("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.0\r\n\r\n", &out).ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].path, "/a");
  EXPECT_EQ(out[1].path, "/b");
  EXPECT_EQ(out[2].path, "/c");
  EXPECT_FALSE(out[2].keep_alive);  // HTTP/1.0 without keep-alive
}

TEST(RequestParserTest, ChunkedBodyIsDecoded) {
  RequestParser p;
  std::vector<Request> out;
  ASSERT_TRUE(p.Feed("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                     &out)
                  .ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].body, "hello world");
}

TEST(RequestParserTest, ConnectionCloseIsHonoured) {
  RequestParser p;
  std::vector<Request> out;
  ASSERT_TRUE(p.Feed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FALSE(out[0].keep_alive);
}

TEST(RequestParserTest, GarbageIsA400) {
  RequestParser p;
  std::vector<Request> out;
  absl::Status s = p.Feed("\x16\x03\x01\x02\x00 hello\r\n\r\n", &out);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(p.error_status(), 400);
  EXPECT_TRUE(out.empty());
}

TEST(RequestParserTest, OversizedHeadersAreA431) {
  RequestParser p(Limits{.max_header_bytes = 256, .max_body_bytes = 1024});
  std::vector<Request> out;
  std::string req = "GET / HTTP/1.1\r\nX: " + std::string(300, 'a') + "\r\n\r\n";
  EXPECT_FALSE(p.Feed(req, &out).ok());
  EXPECT_EQ(p.error_status(), 431);
}

TEST(RequestParserTest, OversizedBodiesAreA413WhetherDeclaredOrChunked) {
  {
    RequestParser p(Limits{.max_header_bytes = 1024, .max_body_bytes = 10});
    std::vector<Request> out;
    EXPECT_FALSE(p.Feed("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &out).ok());
    EXPECT_EQ(p.error_status(), 413);
  }
  {
    RequestParser p(Limits{.max_header_bytes = 1024, .max_body_bytes = 10});
    std::vector<Request> out;
    EXPECT_FALSE(p.Feed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "8\r\n12345678\r\n8\r\n12345678\r\n",
                        &out)
                     .ok());
    EXPECT_EQ(p.error_status(), 413);
  }
}

TEST(RequestParserTest, UpgradeStopsHttpParsingAtTheBoundary) {
  RequestParser p;
  std::vector<Request> out;
  std::string req =
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
  size_t consumed = 0;
  ASSERT_TRUE(p.Feed(req + "\x81\x05hello", &out, &consumed).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].upgrade);
  EXPECT_EQ(consumed, req.size());
}

TEST(ResponseTest, SerializesStatusHeadersLengthAndBody) {
  Response r{404, {{"Content-Type", "text/plain"}}, "not found\n"};
  EXPECT_EQ(SerializeResponse(r, true),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
            "Connection: keep-alive\r\n\r\nnot found\n");
  EXPECT_EQ(SerializeResponse(r, false, /*head_only=*/true),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
            "Connection: close\r\n\r\n");
}

}  // namespace
}  // namespace herald::http
