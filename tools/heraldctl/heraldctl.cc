// heraldctl: operator command line for a Herald core cluster (Admin and Broker gRPC APIs).
//
//   heraldctl [--servers=host:port,...] [--json] [--timeout=5s] [--partitions=N] COMMAND ...
//
// Membership is static today and every core node answers Admin calls from its own view, so
// heraldctl asks every node it can find (the --servers it is given, plus the nodes their
// metadata lists) and merges the answers: per partition it keeps the leader's own answer, or
// else the one with the highest term. Run `heraldctl --help` for the commands.
//
// `heraldctl passwd` is the exception: it edits an MQTT edge password file locally.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/time/time.h"
#include "herald/v1/admin.grpc.pb.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/auth/password_file.h"
#include "libs/auth/text_file.h"
#include "libs/common/grpc_tls.h"
#include "libs/common/partitioning.h"
#include "libs/common/status.h"
#include "libs/common/strings.h"

namespace herald::ctl {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr const char* kHelp = R"(heraldctl: operate a Herald core cluster.

usage: heraldctl [GLOBAL FLAGS] COMMAND [COMMAND FLAGS]

Global flags (anywhere on the line; --flag=value or --flag value):
  --servers=HOST:PORT,...  core nodes to ask first (default: $HERALD_SERVERS, else the
                           servers of ./var/cluster/cluster.json (tools/dev cluster up),
                           else 127.0.0.1:7070). The other nodes are found from their
                           metadata.
  --partitions=N           partition count of the cluster, used to map a topic to its
                           partition (default: asked from the cluster with GetClusterStatus).
  --json                   machine-readable output: one JSON document for status, partitions
                           and transfer-leader; one JSON object per line for publish and
                           subscribe.
  --timeout=DURATION       deadline of each operation, retries included (default 5s; a plain
                           number is seconds; e.g. 500ms, 2s).
  --tls-cert=FILE --tls-key=FILE --tls-ca=FILE
                           mutual TLS to cores running with grpc.tls.*: this client's PEM
                           certificate and key, and the CA the servers' certificates chain to
                           (all three or none; default $HERALD_TLS_CERT, $HERALD_TLS_KEY,
                           $HERALD_TLS_CA). A server's certificate must name the host given in
                           --servers (or found in metadata).
  --help                   this text.

Commands:
  status
      Every node of the cluster (from each node's own view, merged): address, whether it
      answered heraldctl, how many partition replicas it holds, which partitions it leads.
  partitions
      Every partition: leader, term, replicas (voters, learners after '+'), commit index,
      log start offset, last offset and stored messages, from the leader's answer when the
      leader answered (else from the replica with the highest term; marked in FROM).
  publish --topic=T [--message=M] [--retain] [--qos=0|1|2]
      Publishes M, or without --message every line of stdin as one message, to the topic's
      partition leader (following NOT_LEADER hints). Uses a random producer id and consecutive
      sequence numbers, so retries after a leader change or a lost answer never duplicate.
      Prints the partition and offset of each message.
  subscribe --filter=F [--filter=F2 ...] [--partition=P] [--from=earliest|latest|OFFSET]
            [--follow]
      Reads committed messages matching the MQTT topic filters from the partitions' leaders
      (Fetch polling), in offset order per partition. Without --partition: the partition of the
      filter when it has no wildcard, else every partition. --from: earliest (default), latest
      (only messages committed from now on), or OFFSET (messages at offsets >= OFFSET).
      Without --follow it stops at the end of each partition; with --follow it keeps polling
      every 200 ms until interrupted.
  transfer-leader --partition=P [--to=NODE]
      Moves leadership of partition P to node NODE (a voter; omitted or 0: the leader picks)
      and waits until NODE leads, within --timeout.
  remove-node NODE
      Asks the cluster to remove node NODE. Membership is static today: the servers answer
      UNIMPLEMENTED, which heraldctl reports.
  passwd FILE USER [--password=P] [--delete]
      Sets USER's password in the MQTT edge's password file FILE (mqtt.password_file), without
      asking any server: creates FILE (mode 0600) if missing, replaces USER's line or appends
      one, and keeps every other line and comment. Without --password the password is one
      line of stdin (asked twice, without echo, on a terminal); --password shows it to other
      local users through the process list. --delete removes USER instead. The password is
      stored as PBKDF2-HMAC-SHA-512 with 210000 iterations and a random 16-byte salt. The file
      is replaced atomically (temporary file, fsync, rename).

Exit status: 0 done, 1 the operation failed (the reason is printed on stderr), 2 usage error.
)";

// ---------------------------------------------------------------------------------------------
// Command line

struct Flags {
  std::vector<std::string> servers;
  std::optional<uint32_t> partitions;
  bool json = false;
  std::chrono::milliseconds timeout{5000};
  // Credentials of every channel: insecure, or mutual TLS with --tls-cert/--tls-key/--tls-ca.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string command;
  std::vector<std::string> positional;
  // Command flags; a flag may repeat (--filter).
  std::multimap<std::string, std::string> values;
  std::set<std::string> switches;
};

const std::set<std::string>& BooleanFlags() {
  static const std::set<std::string> s = {"json", "retain", "follow", "help", "delete"};
  return s;
}

const std::set<std::string>& ValueFlags() {
  static const std::set<std::string> s = {"servers",  "partitions", "timeout",   "topic", "message",
                                          "qos",      "filter",     "partition", "from",  "to",
                                          "password", "tls-cert",   "tls-key",   "tls-ca"};
  return s;
}

std::vector<std::string> SplitComma(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string_view::npos) comma = s.size();
    if (comma > start) out.emplace_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

template <typename T>
bool ParseUint(std::string_view s, T* out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool ParseTimeout(const std::string& s, std::chrono::milliseconds* out) {
  uint64_t seconds = 0;
  if (ParseUint(s, &seconds)) {
    *out = std::chrono::seconds(seconds);
    return seconds > 0;
  }
  absl::Duration d;
  if (!absl::ParseDuration(s, &d) || d <= absl::ZeroDuration()) return false;
  *out = std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
  return true;
}

// The default --servers: those of the local cluster that `tools/dev cluster up` describes in
// var/cluster/cluster.json (when heraldctl runs in the repository), else 127.0.0.1:7070.
std::string LocalClusterServers() {
  std::ifstream in("var/cluster/cluster.json");
  if (in) {
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("servers") && j["servers"].is_string()) {
      std::string servers = j["servers"].get<std::string>();
      if (!servers.empty()) return servers;
    }
  }
  return "127.0.0.1:7070";
}

// Parses argv; on a usage problem returns nullopt with the reason in `error`.
std::optional<Flags> ParseCommandLine(int argc, char** argv, std::string* error, bool* help) {
  Flags f;
  const char* env = std::getenv("HERALD_SERVERS");
  f.servers = SplitComma(env != nullptr && *env != '\0' ? env : LocalClusterServers());
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) != 0 || a == "--") {
      if (f.command.empty()) {
        f.command = a;
      } else {
        f.positional.push_back(a);
      }
      continue;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (BooleanFlags().count(name) != 0) {
      if (has_value && value != "true" && value != "false") {
        *error = StrCat("--", name, " takes no value");
        return std::nullopt;
      }
      if (!has_value || value == "true") f.switches.insert(name);
      continue;
    }
    if (ValueFlags().count(name) == 0) {
      *error = StrCat("unknown flag --", name);
      return std::nullopt;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        *error = StrCat("--", name, " needs a value");
        return std::nullopt;
      }
      value = argv[++i];
    }
    f.values.emplace(name, value);
  }
  *help = f.switches.count("help") != 0;
  f.json = f.switches.count("json") != 0;
  for (auto [it, end] = f.values.equal_range("servers"); it != end; ++it) {
    f.servers = SplitComma(it->second);
    if (f.servers.empty()) {
      *error = "--servers is empty";
      return std::nullopt;
    }
  }
  for (auto [it, end] = f.values.equal_range("partitions"); it != end; ++it) {
    uint32_t p = 0;
    if (!ParseUint(it->second, &p) || p == 0) {
      *error = StrCat("--partitions: '", it->second, "' is not a positive number");
      return std::nullopt;
    }
    f.partitions = p;
  }
  for (auto [it, end] = f.values.equal_range("timeout"); it != end; ++it) {
    if (!ParseTimeout(it->second, &f.timeout)) {
      *error = StrCat("--timeout: '", it->second, "' is not a duration (e.g. 5s, 500ms)");
      return std::nullopt;
    }
  }
  GrpcTlsConfig tls;
  tls.cert_option = "--tls-cert";
  tls.key_option = "--tls-key";
  tls.ca_option = "--tls-ca";
  for (auto [flag, field, env_name] : {std::tuple{"tls-cert", &tls.cert_file, "HERALD_TLS_CERT"},
                                       std::tuple{"tls-key", &tls.key_file, "HERALD_TLS_KEY"},
                                       std::tuple{"tls-ca", &tls.ca_file, "HERALD_TLS_CA"}}) {
    const char* env_value = std::getenv(env_name);
    if (env_value != nullptr) *field = env_value;
    for (auto [it, end] = f.values.equal_range(flag); it != end; ++it) *field = it->second;
  }
  auto credentials = tls.ChannelCredentials();
  if (!credentials.ok()) {
    *error = std::string(AsStd(credentials.status().message()));
    return std::nullopt;
  }
  f.credentials = *credentials;
  return f;
}

// The last value of a command flag, if given.
std::optional<std::string> Value(const Flags& f, const std::string& name) {
  auto [it, end] = f.values.equal_range(name);
  std::optional<std::string> out;
  for (; it != end; ++it) out = it->second;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output helpers

// Whether `s` is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF).
bool IsUtf8(std::string_view s) {
  static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n;  // continuation bytes
    uint32_t cp;
    if (c < 0x80) {
      n = 0, cp = c;
    } else if ((c >> 5) == 0x6) {
      n = 1, cp = c & 0x1f;
    } else if ((c >> 4) == 0xe) {
      n = 2, cp = c & 0x0f;
    } else if ((c >> 3) == 0x1e) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (size_t k = 1; k <= n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

// A JSON string of UTF-8 text (control characters escaped).
std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

// `"payload":"text"` for UTF-8 payloads, else `"payload_base64":"..."`, so any bytes round-trip.
std::string JsonPayload(std::string_view payload) {
  if (IsUtf8(payload)) return StrCat("\"payload\":", JsonString(payload));
  std::string b64;
  absl::Base64Escape(AsAbsl(payload), &b64);
  return StrCat("\"payload_base64\":", JsonString(b64));
}

template <typename T>
std::string JsonArray(const std::vector<T>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) StrAppend(&out, i ? "," : "", v[i]);
  return out + "]";
}

std::string JoinIds(const std::vector<uint64_t>& ids) {
  std::string out;
  for (uint64_t id : ids) StrAppend(&out, out.empty() ? "" : ",", id);
  return out;
}

// Payloads in text output: printable ASCII and UTF-8 as is, other control bytes escaped.
std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// A table with aligned columns, printed to stdout.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print() const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
    }
    for (const auto& r : rows_) {
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line.append(width[i] - r[i].size() + 2, ' ');
      }
      std::printf("%s\n", line.c_str());
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string AddressOf(const v1::Endpoint& e) {
  if (e.host().empty() || e.port() == 0) return "";
  if (e.host().find(':') != std::string::npos) return StrCat("[", e.host(), "]:", e.port());
  return StrCat(e.host(), ":", e.port());
}

std::string Describe(const v1::ErrorInfo& e) {
  std::string name = v1::ErrorCode_Name(e.code());
  if (name.rfind("ERROR_CODE_", 0) == 0) name = name.substr(11);
  std::string out = StrCat(name, ": ", e.message());
  if (e.has_leader_hint() && e.leader_hint().node_id() != 0) {
    StrAppend(&out, " (leader: node ", e.leader_hint().node_id(), ")");
  }
  return out;
}

// "CODE: message" of a failed call, from the ErrorInfo the server put in the details when there
// is one, else from the gRPC status.
std::string Describe(const grpc::Status& st) {
  v1::ErrorInfo info;
  if (!st.error_details().empty() && info.ParseFromString(st.error_details()) &&
      info.code() != v1::ERROR_CODE_UNSPECIFIED) {
    if (info.message().empty()) info.set_message(st.error_message());
    return Describe(info);
  }
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int code = static_cast<int>(st.error_code());
  return StrCat(code >= 0 && code <= 16 ? kNames[code] : "ERROR", ": ", st.error_message());
}

// ---------------------------------------------------------------------------------------------
// Cluster access

struct NodeView {
  uint64_t node_id = 0;
  std::string address;
  bool answered = false;
  std::string error;  // why it did not answer
  v1::GetClusterStatusResponse status;
};

class Cluster {
 public:
  explicit Cluster(const Flags& flags) : flags_(flags) {}

  std::unique_ptr<grpc::ClientContext> Context(SteadyClock::time_point deadline) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    auto left = std::max<SteadyClock::duration>(deadline - SteadyClock::now(),
                                                std::chrono::milliseconds(1));
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(left));
    return ctx;
  }
  SteadyClock::time_point Deadline() const { return SteadyClock::now() + flags_.timeout; }

  std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    auto& ch = channels_[address];
    if (!ch) ch = grpc::CreateChannel(address, flags_.credentials);
    return ch;
  }
  std::unique_ptr<v1::Admin::Stub> Admin(const std::string& address) {
    return v1::Admin::NewStub(Channel(address));
  }
  std::unique_ptr<v1::Broker::Stub> Broker(const std::string& address) {
    return v1::Broker::NewStub(Channel(address));
  }

  // GetClusterStatus from each address (distinct ones once), in parallel.
  std::map<std::string, NodeView> AskAll(const std::vector<std::string>& addresses,
                                         SteadyClock::time_point deadline) {
    std::map<std::string, std::future<NodeView>> calls;
    for (const std::string& address : addresses) {
      if (calls.count(address) != 0) continue;
      calls[address] = std::async(
          std::launch::async, [this, address, stub = Admin(address), deadline]() -> NodeView {
            NodeView v;
            v.address = address;
            auto ctx = Context(deadline);
            grpc::Status st = stub->GetClusterStatus(ctx.get(), {}, &v.status);
            if (st.ok()) {
              v.answered = true;
              v.node_id = v.status.answered_by_node_id();
            } else {
              v.error = Describe(st);
            }
            return v;
          });
    }
    std::map<std::string, NodeView> out;
    for (auto& [address, f] : calls) out[address] = f.get();
    return out;
  }

  // Asks the seeds, then (unless `seeds_only`) every other node their metadata lists, for their
  // status; nodes are keyed by id. A listed node that does not answer is kept with its error; a
  // seed that does not answer is left out. Calls run in parallel, so a hung node costs one
  // timeout, not one per node. Returns false (with `error`) if no seed answered.
  bool Discover(std::string* error, bool seeds_only = false) {
    auto deadline = Deadline();
    std::map<std::string, NodeView> seeds = AskAll(flags_.servers, deadline);
    std::vector<std::string> failed_seeds;
    for (const std::string& s : flags_.servers) {
      const NodeView& v = seeds[s];
      if (!v.answered) {
        failed_seeds.push_back(StrCat(s, ": ", v.error));
      } else if (nodes_.count(v.node_id) == 0) {
        nodes_[v.node_id] = v;
      }
    }
    if (nodes_.empty()) {
      *error = StrCat("no server answered (",
                      failed_seeds.empty() ? std::string("no servers") : failed_seeds[0],
                      failed_seeds.size() > 1 ? ", ..." : "", ")");
      return false;
    }
    for (const auto& [id, v] : nodes_) {
      for (const auto& n : v.status.metadata().nodes()) {
        listed_.emplace(n.node_id(), AddressOf(n.api_endpoint()));
      }
    }
    if (seeds_only) return true;
    // Nodes listed in metadata that no seed reached.
    std::vector<std::string> others;
    for (const auto& [id, address] : listed_) {
      if (nodes_.count(id) == 0) others.push_back(address);
    }
    std::map<std::string, NodeView> answers = AskAll(others, deadline);
    for (const auto& [id, address] : listed_) {
      if (nodes_.count(id) != 0) continue;
      NodeView v = seeds.count(address) != 0 ? seeds[address] : answers[address];
      v.node_id = id;
      v.address = address;
      if (v.answered && v.status.answered_by_node_id() != id) {
        v.answered = false;
        v.error = StrCat("answered as node ", v.status.answered_by_node_id());
      }
      nodes_[id] = std::move(v);
    }
    return true;
  }

  const std::map<uint64_t, NodeView>& nodes() const { return nodes_; }

  // The address of a node, from discovery; "" if unknown.
  std::string AddressOfNode(uint64_t id) const {
    auto it = listed_.find(id);
    return it == listed_.end() ? "" : it->second;
  }

  // The status of any node that answered (after Discover()).
  const v1::GetClusterStatusResponse* AnyStatus() const {
    for (const auto& [id, v] : nodes_) {
      if (v.answered) return &v.status;
    }
    return nullptr;
  }

  // Partition count: --partitions, else from the first seed that answers GetClusterStatus.
  std::optional<uint32_t> PartitionCount(std::string* error) {
    if (flags_.partitions.has_value()) return flags_.partitions;
    if (nodes_.empty() && !Discover(error, /*seeds_only=*/true)) return std::nullopt;
    const auto* st = AnyStatus();
    if (st == nullptr || st->metadata().partition_count() == 0) {
      *error = "the cluster did not tell its partition count; pass --partitions";
      return std::nullopt;
    }
    return st->metadata().partition_count();
  }

  // Every address heraldctl knows: seeds first, then discovered nodes.
  std::vector<std::string> Addresses() const {
    std::vector<std::string> out = flags_.servers;
    for (const auto& [id, address] : listed_) {
      if (!address.empty() && std::find(out.begin(), out.end(), address) == out.end()) {
        out.push_back(address);
      }
    }
    return out;
  }

  // Best-known leader per partition from the nodes' metadata (highest leader_term wins).
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> LeaderHints() const {
    std::map<uint32_t, std::pair<uint64_t, uint64_t>> out;  // partition -> (leader, term)
    for (const auto& [id, v] : nodes_) {
      if (!v.answered) continue;
      for (const auto& p : v.status.metadata().partitions()) {
        if (p.leader_node_id() == 0) continue;
        auto& cur = out[p.partition()];
        if (p.leader_term() >= cur.second) cur = {p.leader_node_id(), p.leader_term()};
      }
    }
    return out;
  }

 private:
  const Flags& flags_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  std::map<uint64_t, NodeView> nodes_;
  std::map<uint64_t, std::string> listed_;  // every node in the answering nodes' metadata
};

// Finds a partition's leader address, following NOT_LEADER hints. Tries the hinted leader first,
// then every known address in turn.
class LeaderRouter {
 public:
  explicit LeaderRouter(Cluster& c) : cluster_(c), addresses_(c.Addresses()) {}

  std::string Current(uint32_t partition) {
    auto it = leader_.find(partition);
    if (it != leader_.end()) return it->second;
    return addresses_[partition % addresses_.size()];
  }
  void Hint(uint32_t partition, const v1::ErrorInfo& e) {
    std::string addr;
    if (e.has_leader_hint()) {
      addr = AddressOf(e.leader_hint().endpoint());
      if (addr.empty()) addr = cluster_.AddressOfNode(e.leader_hint().node_id());
    }
    if (addr.empty()) {
      Next(partition);
    } else {
      leader_[partition] = addr;
      if (std::find(addresses_.begin(), addresses_.end(), addr) == addresses_.end()) {
        addresses_.push_back(addr);
      }
    }
  }
  void Next(uint32_t partition) {
    std::string cur = Current(partition);
    auto it = std::find(addresses_.begin(), addresses_.end(), cur);
    size_t i = it == addresses_.end() ? 0 : static_cast<size_t>(it - addresses_.begin()) + 1;
    leader_[partition] = addresses_[i % addresses_.size()];
  }

 private:
  Cluster& cluster_;
  std::vector<std::string> addresses_;
  std::map<uint32_t, std::string> leader_;
};

void Fail(const std::string& command, const std::string& why) {
  std::fprintf(stderr, "heraldctl %s: %s\n", command.c_str(), why.c_str());
}

// ---------------------------------------------------------------------------------------------
// status

int RunStatus(const Flags& f) {
  Cluster c(f);
  std::string error;
  if (!c.Discover(&error)) {
    Fail("status", error);
    return kExitFailed;
  }
  const v1::GetClusterStatusResponse& any = *c.AnyStatus();
  auto leaders = c.LeaderHints();
  std::map<uint64_t, std::vector<uint32_t>> led;
  for (const auto& [p, lt] : leaders) led[lt.first].push_back(p);
  // Replica counts from the placement in metadata (the same on every node with static
  // membership).
  std::map<uint64_t, uint32_t> replicas;
  for (const auto& p : any.metadata().partitions()) {
    for (uint64_t id : p.voters()) ++replicas[id];
    for (uint64_t id : p.learners()) ++replicas[id];
  }
  const uint32_t pc = any.metadata().partition_count();
  const uint32_t without_leader = pc - static_cast<uint32_t>(std::min<size_t>(pc, leaders.size()));

  if (f.json) {
    std::string out =
        StrCat("{\"cluster_id\":", JsonString(any.metadata().cluster_id()),
               ",\"partition_count\":", pc, ",\"replication_factor\":", any.replication_factor(),
               ",\"partitions_without_leader\":", without_leader, ",\"nodes\":[");
    bool first = true;
    for (const auto& [id, v] : c.nodes()) {
      if (id == 0) continue;
      StrAppend(&out, first ? "" : ",", "{\"node_id\":", id, ",\"address\":", JsonString(v.address),
                ",\"answered\":", v.answered, ",\"replica_count\":", replicas[id],
                ",\"leader_count\":", led[id].size(), ",\"leads\":", JsonArray(led[id]));
      if (!v.answered) StrAppend(&out, ",\"error\":", JsonString(v.error));
      out += "}";
      first = false;
    }
    out += "]}";
    std::printf("%s\n", out.c_str());
    return kExitOk;
  }
  std::printf("cluster %s: %zu node(s), %u partitions, replication factor %u\n",
              any.metadata().cluster_id().c_str(), c.nodes().size(), pc, any.replication_factor());
  if (without_leader != 0) {
    std::printf("partitions without a known leader: %u\n", without_leader);
  }
  Table t({"NODE", "ADDRESS", "ANSWERED", "REPLICAS", "LEADERS", "LEADS PARTITIONS"});
  for (const auto& [id, v] : c.nodes()) {
    if (id == 0) continue;
    std::string leads;
    for (uint32_t p : led[id]) StrAppend(&leads, leads.empty() ? "" : ",", p);
    t.Add({StrCat(id), v.address, v.answered ? "yes" : "no", StrCat(replicas[id]),
           StrCat(led[id].size()), leads.empty() ? "-" : leads});
  }
  t.Print();
  for (const auto& [id, v] : c.nodes()) {
    if (!v.answered) {
      std::fprintf(stderr, "heraldctl status: node %llu (%s) did not answer: %s\n",
                   static_cast<unsigned long long>(id), v.address.c_str(), v.error.c_str());
    }
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// partitions

struct MergedPartition {
  uint32_t partition = 0;
  std::optional<v1::PartitionStatus> status;
  uint64_t from_node = 0;  // whose answer `status` is
};

int RunPartitions(const Flags& f) {
  Cluster c(f);
  std::string error;
  if (!c.Discover(&error)) {
    Fail("partitions", error);
    return kExitFailed;
  }
  auto pc = c.PartitionCount(&error);
  if (!pc.has_value()) {
    Fail("partitions", error);
    return kExitFailed;
  }
  std::vector<MergedPartition> merged(*pc);
  for (uint32_t p = 0; p < *pc; ++p) merged[p].partition = p;
  auto deadline = c.Deadline();
  // Every answering node in parallel.
  std::map<uint64_t, std::future<std::pair<grpc::Status, v1::ListPartitionsResponse>>> calls;
  for (const auto& [id, v] : c.nodes()) {
    if (!v.answered) continue;
    calls[id] = std::async(std::launch::async, [&c, stub = c.Admin(v.address), deadline] {
      std::pair<grpc::Status, v1::ListPartitionsResponse> r;
      auto ctx = c.Context(deadline);
      r.first = stub->ListPartitions(ctx.get(), {}, &r.second);
      return r;
    });
  }
  for (auto& [id, call] : calls) {
    const NodeView& v = c.nodes().at(id);
    auto [st, resp] = call.get();
    if (!st.ok()) {
      std::fprintf(stderr, "heraldctl partitions: node %llu (%s): %s\n",
                   static_cast<unsigned long long>(id), v.address.c_str(), Describe(st).c_str());
      continue;
    }
    for (const auto& ps : resp.partitions()) {
      uint32_t p = ps.info().partition();
      if (p >= *pc || ps.has_error()) continue;
      MergedPartition& m = merged[p];
      // The leader's own answer wins; otherwise the newest term.
      bool from_leader = ps.info().leader_node_id() == id;
      bool have_leader = m.status.has_value() && m.status->info().leader_node_id() == m.from_node;
      bool newer = m.status.has_value() && ps.info().leader_term() > m.status->info().leader_term();
      if (!m.status.has_value() || (from_leader && (!have_leader || newer)) ||
          (!have_leader && newer)) {
        m.status = ps;
        m.from_node = id;
      }
    }
  }
  const v1::GetClusterStatusResponse& any = *c.AnyStatus();
  if (f.json) {
    std::string out = "{\"partitions\":[";
    for (const auto& m : merged) {
      StrAppend(&out, m.partition ? "," : "", "{\"partition\":", m.partition);
      if (m.status.has_value()) {
        const auto& s = *m.status;
        std::vector<uint64_t> voters(s.info().voters().begin(), s.info().voters().end());
        std::vector<uint64_t> learners(s.info().learners().begin(), s.info().learners().end());
        uint64_t messages =
            s.log_start_offset() != 0 ? s.last_offset() - s.log_start_offset() + 1 : 0;
        StrAppend(
            &out, ",\"leader\":", s.info().leader_node_id(), ",\"term\":", s.info().leader_term(),
            ",\"epoch\":", s.info().epoch(), ",\"voters\":", JsonArray(voters),
            ",\"learners\":", JsonArray(learners), ",\"commit_index\":", s.commit_index(),
            ",\"log_start_offset\":", s.log_start_offset(), ",\"last_offset\":", s.last_offset(),
            ",\"messages\":", messages, ",\"reported_by\":", m.from_node,
            ",\"from_leader\":", s.info().leader_node_id() == m.from_node);
        if (s.info().leader_node_id() == m.from_node) {
          // The leader's view of each replica: the highest log index durable there.
          out += ",\"match_index\":{";
          for (int i = 0; i < s.replicas_size(); ++i) {
            StrAppend(&out, i ? "," : "", "\"", s.replicas(i).node_id(),
                      "\":", s.replicas(i).match_index());
          }
          out += "}";
        }
      } else {
        std::vector<uint64_t> voters;
        if (m.partition < static_cast<uint32_t>(any.metadata().partitions_size())) {
          const auto& pi = any.metadata().partitions(static_cast<int>(m.partition));
          voters.assign(pi.voters().begin(), pi.voters().end());
        }
        StrAppend(&out, ",\"leader\":0,\"voters\":", JsonArray(voters),
                  ",\"error\":\"no replica of this partition answered\"");
      }
      out += "}";
    }
    out += "]}";
    std::printf("%s\n", out.c_str());
    return kExitOk;
  }
  Table t({"PARTITION", "LEADER", "TERM", "REPLICAS", "COMMIT", "LOG START", "LAST OFFSET",
           "MESSAGES", "FROM"});
  for (const auto& m : merged) {
    if (!m.status.has_value()) {
      t.Add({StrCat(m.partition), "?", "-", "-", "-", "-", "-", "-", "no replica answered"});
      continue;
    }
    const auto& s = *m.status;
    std::vector<uint64_t> voters(s.info().voters().begin(), s.info().voters().end());
    std::vector<uint64_t> learners(s.info().learners().begin(), s.info().learners().end());
    std::string replicas = JoinIds(voters);
    if (!learners.empty()) StrAppend(&replicas, "+", JoinIds(learners));
    uint64_t messages = s.log_start_offset() != 0 ? s.last_offset() - s.log_start_offset() + 1 : 0;
    uint64_t leader = s.info().leader_node_id();
    t.Add({StrCat(m.partition), leader ? StrCat(leader) : "none", StrCat(s.info().leader_term()),
           replicas, StrCat(s.commit_index()), StrCat(s.log_start_offset()),
           StrCat(s.last_offset()), StrCat(messages),
           leader == m.from_node ? "leader" : StrCat("node ", m.from_node)});
  }
  t.Print();
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// publish

uint64_t RandomProducerId() {
  std::random_device rd;
  uint64_t id = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return id == 0 ? 1 : id;
}

int RunPublish(const Flags& f) {
  auto topic = Value(f, "topic");
  if (!topic.has_value() || topic->empty()) {
    std::fprintf(stderr, "heraldctl publish: --topic is required\n");
    return kExitUsage;
  }
  v1::QoS qos = v1::QOS_AT_MOST_ONCE;
  if (auto q = Value(f, "qos")) {
    int n = 0;
    if (!ParseUint(*q, &n) || n > 2) {
      std::fprintf(stderr, "heraldctl publish: --qos must be 0, 1 or 2\n");
      return kExitUsage;
    }
    qos = static_cast<v1::QoS>(n);
  }
  std::vector<std::string> payloads;
  if (auto m = Value(f, "message")) {
    payloads.push_back(*m);
  } else {
    std::string line;
    while (std::getline(std::cin, line)) payloads.push_back(line);
  }
  if (payloads.empty()) return kExitOk;

  Cluster c(f);
  std::string error;
  auto pc = c.PartitionCount(&error);
  if (!pc.has_value()) {
    Fail("publish", error);
    return kExitFailed;
  }
  const uint32_t partition = PartitionFor(*topic, *pc);
  LeaderRouter router(c);
  const uint64_t producer = RandomProducerId();
  uint64_t sequence = 0;
  constexpr size_t kBatch = 1000;
  for (size_t begin = 0; begin < payloads.size(); begin += kBatch) {
    v1::PublishRequest req;
    for (size_t i = begin; i < std::min(payloads.size(), begin + kBatch); ++i) {
      v1::Message* m = req.add_messages();
      m->set_topic(*topic);
      m->set_payload(payloads[i]);
      m->set_qos(qos);
      m->set_retain(f.switches.count("retain") != 0);
      m->set_producer_id(producer);
      m->set_sequence(++sequence);
    }
    // The same request (same producer id and sequences) is resent until every message has an
    // outcome: what already committed comes back as a duplicate with its original offset.
    auto deadline = c.Deadline();
    std::string last_error = "no attempt";
    std::optional<v1::PublishResponse> done;
    while (!done.has_value() && SteadyClock::now() < deadline) {
      std::string address = router.Current(partition);
      v1::PublishResponse resp;
      auto ctx = c.Context(deadline);
      grpc::Status st = c.Broker(address)->Publish(ctx.get(), req, &resp);
      if (!st.ok()) {
        last_error = StrCat(address, ": ", Describe(st));
        if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) break;
        router.Next(partition);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      const v1::ErrorInfo* retry = nullptr;
      const v1::ErrorInfo* fatal = nullptr;
      for (const auto& r : resp.results()) {
        if (!r.has_error() || r.error().code() == v1::ERROR_CODE_DUPLICATE) continue;
        switch (r.error().code()) {
          case v1::ERROR_CODE_NOT_LEADER:
          case v1::ERROR_CODE_PARTITION_UNAVAILABLE:
          case v1::ERROR_CODE_OUTCOME_UNKNOWN:
          case v1::ERROR_CODE_OVERLOADED:
          case v1::ERROR_CODE_SHUTTING_DOWN:
            if (retry == nullptr) retry = &r.error();
            break;
          default:
            if (fatal == nullptr) fatal = &r.error();
        }
      }
      if (fatal != nullptr) {
        last_error = Describe(*fatal);
        break;
      }
      if (retry == nullptr) {
        done = std::move(resp);
        break;
      }
      last_error = StrCat(address, ": ", Describe(*retry));
      if (retry->code() == v1::ERROR_CODE_NOT_LEADER ||
          retry->code() == v1::ERROR_CODE_SHUTTING_DOWN) {
        router.Hint(partition, *retry);
      }
      std::this_thread::sleep_for(
          std::chrono::milliseconds(retry->retry_after_ms() != 0 ? retry->retry_after_ms() : 50));
    }
    if (!done.has_value()) {
      Fail("publish", StrCat("messages ", begin + 1, "..", begin + req.messages_size(),
                             " to partition ", partition, ": ", last_error,
                             begin > 0 ? " (the earlier messages were published)" : ""));
      return kExitFailed;
    }
    for (const auto& r : done->results()) {
      bool forgotten = r.has_error();  // DUPLICATE whose offset is no longer remembered
      if (f.json) {
        std::printf(
            "{\"topic\":%s,\"partition\":%u,\"epoch\":%llu,\"offset\":%llu,"
            "\"duplicate\":%s}\n",
            JsonString(*topic).c_str(), r.partition(), static_cast<unsigned long long>(r.epoch()),
            static_cast<unsigned long long>(r.offset()),
            r.duplicate() || forgotten ? "true" : "false");
      } else if (forgotten) {
        std::printf("partition %u: already published earlier (offset no longer known)\n",
                    r.partition());
      } else {
        std::printf("partition %u offset %llu%s\n", r.partition(),
                    static_cast<unsigned long long>(r.offset()),
                    r.duplicate() ? " (duplicate)" : "");
      }
    }
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// subscribe

bool HasWildcard(std::string_view filter) {
  return filter.find_first_of("+#") != std::string_view::npos;
}

struct ReadState {
  uint32_t partition = 0;
  uint64_t after = 0;
  bool resolved = false;  // `after` is known (latest needs one read first)
  bool at_end = false;    // reached the last offset of the latest read
  std::string last_error;
};

int RunSubscribe(const Flags& f) {
  std::vector<std::string> filters;
  for (auto [it, end] = f.values.equal_range("filter"); it != end; ++it) {
    filters.push_back(it->second);
  }
  if (filters.empty()) {
    std::fprintf(stderr, "heraldctl subscribe: --filter is required\n");
    return kExitUsage;
  }
  const bool follow = f.switches.count("follow") != 0;
  std::string from = Value(f, "from").value_or("earliest");
  bool latest = from == "latest";
  uint64_t from_offset = 0;
  if (from != "earliest" && !latest && (!ParseUint(from, &from_offset) || from_offset == 0)) {
    std::fprintf(stderr,
                 "heraldctl subscribe: --from must be earliest, latest or an offset >= 1\n");
    return kExitUsage;
  }
  std::optional<uint32_t> only;
  if (auto p = Value(f, "partition")) {
    uint32_t n = 0;
    if (!ParseUint(*p, &n)) {
      std::fprintf(stderr, "heraldctl subscribe: --partition must be a number\n");
      return kExitUsage;
    }
    only = n;
  }
  Cluster c(f);
  std::string error;
  auto pc = c.PartitionCount(&error);
  if (!pc.has_value()) {
    Fail("subscribe", error);
    return kExitFailed;
  }
  std::set<uint32_t> partitions;
  if (only.has_value()) {
    if (*only >= *pc) {
      Fail("subscribe", StrCat("partition ", *only, " does not exist (", *pc, " partitions)"));
      return kExitUsage;
    }
    partitions.insert(*only);
  } else {
    if (std::none_of(filters.begin(), filters.end(), HasWildcard)) {
      // Filters without wildcards are topic names: only their partitions can match.
      for (const auto& t : filters) partitions.insert(PartitionFor(t, *pc));
    } else {
      for (uint32_t p = 0; p < *pc; ++p) partitions.insert(p);
    }
  }
  std::map<uint32_t, ReadState> states;
  for (uint32_t p : partitions) {
    ReadState& s = states[p];
    s.partition = p;
    s.after = from_offset > 0 ? from_offset - 1 : 0;
    s.resolved = !latest;
  }
  LeaderRouter router(c);
  auto deadline = c.Deadline();  // without --follow: for reaching every partition's end
  while (true) {
    // One Fetch per believed leader, with every unfinished partition it leads.
    std::map<std::string, std::vector<uint32_t>> by_leader;
    for (auto& [p, s] : states) {
      if (!s.at_end || follow) by_leader[router.Current(p)].push_back(p);
    }
    if (by_leader.empty()) break;
    bool progressed = false;
    for (const auto& [address, ps] : by_leader) {
      v1::FetchRequest req;
      for (const auto& flt : filters) req.add_filters(flt);
      for (uint32_t p : ps) {
        v1::FetchRange* r = req.add_ranges();
        r->set_partition(p);
        // latest: a read past the end only reports the last offset.
        r->set_after_offset(states[p].resolved ? states[p].after : UINT64_MAX - 1);
      }
      req.set_max_messages(1000);
      v1::FetchResponse resp;
      auto ctx = c.Context(SteadyClock::now() + f.timeout);
      grpc::Status st = c.Broker(address)->Fetch(ctx.get(), req, &resp);
      if (!st.ok()) {
        if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
          Fail("subscribe", Describe(st));
          return kExitFailed;
        }
        for (uint32_t p : ps) {
          states[p].last_error = StrCat(address, ": ", Describe(st));
          router.Next(p);
        }
        continue;
      }
      for (int i = 0; i < resp.results_size() && i < static_cast<int>(ps.size()); ++i) {
        const v1::FetchResult& r = resp.results(i);
        ReadState& s = states[ps[i]];
        if (r.has_error()) {
          s.last_error = StrCat(address, ": ", Describe(r.error()));
          if (r.error().code() == v1::ERROR_CODE_NOT_LEADER) {
            router.Hint(s.partition, r.error());
          } else {
            router.Next(s.partition);
          }
          continue;
        }
        s.last_error.clear();
        progressed = true;
        if (!s.resolved) {
          s.after = r.last_offset();
          s.resolved = true;
          s.at_end = true;
          continue;
        }
        if (r.has_gap()) {
          std::fprintf(stderr,
                       "heraldctl subscribe: partition %u: messages %llu..%llu were removed by "
                       "retention before they were read\n",
                       s.partition, static_cast<unsigned long long>(r.gap().from_offset() + 1),
                       static_cast<unsigned long long>(r.gap().to_offset()));
        }
        for (const v1::Message& m : r.messages()) {
          if (f.json) {
            std::printf(
                "{\"partition\":%u,\"epoch\":%llu,\"offset\":%llu,\"topic\":%s,%s,"
                "\"qos\":%d,\"retain\":%s,\"publish_time_unix_ms\":%lld}\n",
                s.partition, static_cast<unsigned long long>(r.epoch()),
                static_cast<unsigned long long>(m.offset()), JsonString(m.topic()).c_str(),
                JsonPayload(m.payload()).c_str(), static_cast<int>(m.qos()),
                m.retain() ? "true" : "false", static_cast<long long>(m.publish_time_unix_ms()));
          } else {
            std::printf("%u:%llu  %s  %s\n", s.partition,
                        static_cast<unsigned long long>(m.offset()), m.topic().c_str(),
                        Printable(m.payload()).c_str());
          }
        }
        s.after = std::max(s.after, r.evaluated_through());
        s.at_end = s.after >= r.last_offset();
      }
    }
    std::fflush(stdout);
    bool all_done =
        std::all_of(states.begin(), states.end(), [](const auto& kv) { return kv.second.at_end; });
    if (!follow) {
      if (all_done) break;
      if (SteadyClock::now() >= deadline) {
        for (const auto& [p, s] : states) {
          if (!s.at_end) {
            Fail("subscribe", StrCat("partition ", p, ": could not read to the end (",
                                     s.last_error.empty() ? "timeout" : s.last_error, ")"));
          }
        }
        return kExitFailed;
      }
      if (!progressed) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    // Following: poll every 200 ms once caught up (or while no leader answers).
    if (all_done || !progressed) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// transfer-leader

int RunTransferLeader(const Flags& f) {
  auto ps = Value(f, "partition");
  uint32_t partition = 0;
  if (!ps.has_value() || !ParseUint(*ps, &partition)) {
    std::fprintf(stderr, "heraldctl transfer-leader: --partition=P is required\n");
    return kExitUsage;
  }
  uint64_t to = 0;
  if (auto t = Value(f, "to"); t.has_value() && !ParseUint(*t, &to)) {
    std::fprintf(stderr, "heraldctl transfer-leader: --to must be a node id\n");
    return kExitUsage;
  }
  Cluster c(f);
  std::string error;
  if (!c.Discover(&error)) {
    Fail("transfer-leader", error);
    return kExitFailed;
  }
  auto deadline = c.Deadline();
  v1::TransferLeadershipRequest req;
  req.set_partition(partition);
  req.set_target_node_id(to);
  std::string address;
  if (auto hints = c.LeaderHints(); hints.count(partition) != 0) {
    address = c.AddressOfNode(hints[partition].first);
  }
  if (address.empty()) address = c.Addresses().front();
  std::string last_error;
  for (int hop = 0; hop < 5 && SteadyClock::now() < deadline; ++hop) {
    v1::TransferLeadershipResponse resp;
    auto ctx = c.Context(deadline);
    grpc::Status st = c.Admin(address)->TransferLeadership(ctx.get(), req, &resp);
    if (st.ok()) {
      if (f.json) {
        std::printf("{\"partition\":%u,\"leader\":%llu,\"term\":%llu}\n", partition,
                    static_cast<unsigned long long>(resp.leader_node_id()),
                    static_cast<unsigned long long>(resp.term()));
      } else {
        std::printf("partition %u: leader is node %llu (term %llu)\n", partition,
                    static_cast<unsigned long long>(resp.leader_node_id()),
                    static_cast<unsigned long long>(resp.term()));
      }
      return kExitOk;
    }
    last_error = Describe(st);
    v1::ErrorInfo info;
    if (info.ParseFromString(st.error_details()) && info.code() == v1::ERROR_CODE_NOT_LEADER &&
        info.leader_hint().node_id() != 0) {
      std::string next = AddressOf(info.leader_hint().endpoint());
      if (next.empty()) next = c.AddressOfNode(info.leader_hint().node_id());
      if (!next.empty() && next != address) {
        address = next;
        continue;
      }
    }
    if (info.code() == v1::ERROR_CODE_NOT_LEADER) {
      // No usable hint: the partition may be electing; try another node shortly.
      auto addrs = c.Addresses();
      auto it = std::find(addrs.begin(), addrs.end(), address);
      size_t next = it == addrs.end() ? 0 : static_cast<size_t>(it - addrs.begin()) + 1;
      address = addrs[next % addrs.size()];
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    break;  // INVALID_ARGUMENT, OUTCOME_UNKNOWN, ...: report it
  }
  Fail("transfer-leader", StrCat("partition ", partition, ": ", last_error));
  return kExitFailed;
}

// ---------------------------------------------------------------------------------------------
// remove-node

int RunRemoveNode(const Flags& f) {
  uint64_t node = 0;
  if (f.positional.size() != 1 || !ParseUint(f.positional[0], &node) || node == 0) {
    std::fprintf(stderr, "heraldctl remove-node: usage: heraldctl remove-node NODE\n");
    return kExitUsage;
  }
  Cluster c(f);
  std::string last_error = "no server";
  for (const std::string& address : f.servers) {
    v1::RemoveNodeRequest req;
    req.set_node_id(node);
    v1::RemoveNodeResponse resp;
    auto ctx = c.Context(c.Deadline());
    grpc::Status st = c.Admin(address)->RemoveNode(ctx.get(), req, &resp);
    if (st.ok()) {
      std::printf("node %llu is draining\n", static_cast<unsigned long long>(node));
      return kExitOk;
    }
    last_error = StrCat(address, ": ", Describe(st));
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
        st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      break;  // the server's answer, not a transport failure
    }
  }
  Fail("remove-node", last_error);
  return kExitFailed;
}

// ---------------------------------------------------------------------------------------------
// passwd

// Reads one line of stdin without its line end; on a terminal, prompts on stderr with echo off.
std::optional<std::string> ReadPasswordLine(const char* prompt) {
  bool tty = ::isatty(STDIN_FILENO) == 1;
  termios saved{};
  if (tty) {
    std::fputs(prompt, stderr);
    std::fflush(stderr);
    if (::tcgetattr(STDIN_FILENO, &saved) == 0) {
      termios quiet = saved;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    } else {
      tty = false;
    }
  }
  std::string line;
  bool got = static_cast<bool>(std::getline(std::cin, line));
  if (tty) {
    ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    std::fputs("\n", stderr);
  }
  if (!got) return std::nullopt;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

// Replaces the file at `path` with `text`: a temporary file in the same directory, fsynced,
// then renamed over it. A new file gets mode 0600, an existing one keeps its mode.
absl::Status ReplaceFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmp.data());  // mode 0600
  if (fd < 0) return herald::ErrnoToStatus(errno, herald::StrCat("create ", tmp));
  // Call right after the failed call: errno is read before anything else can change it.
  auto fail = [&](std::string_view op) {
    absl::Status st = herald::ErrnoToStatus(errno, herald::StrCat(op, " ", tmp));
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  };
  struct stat existing {};
  if (::stat(path.c_str(), &existing) == 0 && ::fchmod(fd, existing.st_mode & 07777) != 0) {
    return fail("chmod");
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    absl::Status st = herald::ErrnoToStatus(errno, herald::StrCat("close ", tmp));
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status st = herald::ErrnoToStatus(errno, herald::StrCat("rename to ", path));
    ::unlink(tmp.c_str());
    return st;
  }
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY); dfd >= 0) {
    ::fsync(dfd);  // best effort: the rename is done either way
    ::close(dfd);
  }
  return absl::OkStatus();
}

int RunPasswd(const Flags& f) {
  if (f.positional.size() != 2) {
    std::fprintf(stderr,
                 "heraldctl passwd: usage: heraldctl passwd FILE USER [--password=P] [--delete]\n");
    return kExitUsage;
  }
  const std::string& path = f.positional[0];
  const std::string& user = f.positional[1];
  bool remove = f.switches.count("delete") != 0;
  std::optional<std::string> password = Value(f, "password");
  if (remove && password.has_value()) {
    std::fprintf(stderr, "heraldctl passwd: --delete takes no --password\n");
    return kExitUsage;
  }
  if (absl::Status st = auth::ValidatePasswordFileUser(user); !st.ok()) {
    std::fprintf(stderr, "heraldctl passwd: invalid user name: %s\n",
                 std::string(st.message()).c_str());
    return kExitUsage;
  }
  std::string text;
  if (absl::StatusOr<std::string> read = auth::ReadTextFile(path); read.ok()) {
    text = *std::move(read);
  } else if (read.status().code() != absl::StatusCode::kNotFound || remove) {
    Fail("passwd", std::string(read.status().message()));
    return kExitFailed;
  }

  std::string updated;
  if (remove) {
    bool removed = false;
    updated = auth::RemovePasswordFileEntry(text, user, &removed);
    if (!removed) {
      Fail("passwd", herald::StrCat("no user '", user, "' in ", path));
      return kExitFailed;
    }
  } else {
    if (!password.has_value()) {
      password = ReadPasswordLine("Password: ");
      if (password.has_value() && ::isatty(STDIN_FILENO) == 1) {
        std::optional<std::string> again = ReadPasswordLine("Password again: ");
        if (again != password) {
          Fail("passwd", "the passwords differ");
          return kExitFailed;
        }
      }
      if (!password.has_value()) {
        Fail("passwd", "no password on stdin");
        return kExitFailed;
      }
    }
    if (password->empty()) {
      Fail("passwd", "the password is empty");
      return kExitFailed;
    }
    absl::StatusOr<std::string> hash = auth::HashPassword(*password);
    if (!hash.ok()) {
      Fail("passwd", std::string(hash.status().message()));
      return kExitFailed;
    }
    updated = auth::SetPasswordFileEntry(text, user, *hash);
  }
  // Never write a file the edge would refuse: a bad line elsewhere must be fixed first.
  if (auto parsed = auth::PasswordFile::Parse(updated, path, /*cache_entries=*/0); !parsed.ok()) {
    Fail("passwd",
         herald::StrCat(std::string(parsed.status().message()), " (file left unchanged)"));
    return kExitFailed;
  }
  if (absl::Status st = ReplaceFile(path, updated); !st.ok()) {
    Fail("passwd", std::string(st.message()));
    return kExitFailed;
  }
  std::printf("%s: %s '%s'\n", path.c_str(), remove ? "removed user" : "set the password of",
              user.c_str());
  return kExitOk;
}

}  // namespace
}  // namespace herald::ctl

int main(int argc, char** argv) {
  using namespace herald::ctl;
  std::string error;
  bool help = false;
  auto flags = ParseCommandLine(argc, argv, &error, &help);
  if (!flags.has_value()) {
    std::fprintf(stderr, "heraldctl: %s (see heraldctl --help)\n", error.c_str());
    return kExitUsage;
  }
  if (help || flags->command == "help") {
    std::fputs(kHelp, stdout);
    return kExitOk;
  }
  const std::string& cmd = flags->command;
  if (cmd != "remove-node" && cmd != "passwd" && !flags->positional.empty()) {
    std::fprintf(stderr, "heraldctl: unexpected argument '%s' (see heraldctl --help)\n",
                 flags->positional[0].c_str());
    return kExitUsage;
  }
  if (cmd == "status") return RunStatus(*flags);
  if (cmd == "partitions") return RunPartitions(*flags);
  if (cmd == "publish") return RunPublish(*flags);
  if (cmd == "subscribe") return RunSubscribe(*flags);
  if (cmd == "transfer-leader") return RunTransferLeader(*flags);
  if (cmd == "remove-node") return RunRemoveNode(*flags);
  if (cmd == "passwd") return RunPasswd(*flags);
  std::fprintf(
      stderr, "heraldctl: %s (see heraldctl --help)\n",
      cmd.empty() ? "no command given" : herald::StrCat("unknown command '", cmd, "'").c_str());
  return kExitUsage;
}
