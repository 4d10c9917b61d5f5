// heraldctl against three real herald-core processes on loopback: publish and read back,
// partitions and status merged from every node, leadership transfer, and the honest refusal of
// remove-node while membership is static.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "herald/v1/admin.grpc.pb.h"
#include "tests/support/core_cluster.h"

namespace herald {
namespace {

using namespace std::chrono_literals;

constexpr int kNodes = 3;
constexpr int kPartitions = 8;

struct CtlResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

// Runs heraldctl with `args` (after `stdin_text` is piped to it, when given).
CtlResult RunCtl(const std::vector<std::string>& args, const std::string& stdin_text = "") {
  char err_path[] = "/tmp/heraldctl-err-XXXXXX";
  int fd = ::mkstemp(err_path);
  if (fd >= 0) ::close(fd);
  std::string cmd;
  if (!stdin_text.empty()) cmd = "printf '%s' " + ShellQuote(stdin_text) + " | ";
  cmd += ShellQuote(std::string(HERALD_BIN_DIR) + "/heraldctl");
  for (const auto& a : args) cmd += " " + ShellQuote(a);
  cmd += " 2>" + std::string(err_path);
  if (stdin_text.empty()) cmd += " </dev/null";
  CtlResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream ef(err_path);
  std::stringstream ss;
  ss << ef.rdbuf();
  r.err = ss.str();
  ::unlink(err_path);
  return r;
}

// The leader of `partition` in `partitions --json` output; 0 if none or absent.
uint64_t LeaderIn(const std::string& json, int partition) {
  std::smatch m;
  std::regex re("\\{\"partition\":" + std::to_string(partition) + ",\"leader\":(\\d+)");
  if (!std::regex_search(json, m, re)) return 0;
  return std::stoull(m[1].str());
}

std::vector<uint64_t> VotersIn(const std::string& json, int partition) {
  std::smatch m;
  std::regex re("\\{\"partition\":" + std::to_string(partition) +
                ",[^}]*\"voters\":\\[([0-9,]*)\\]");
  std::vector<uint64_t> out;
  if (!std::regex_search(json, m, re)) return out;
  std::stringstream ss(m[1].str());
  std::string id;
  while (std::getline(ss, id, ',')) out.push_back(std::stoull(id));
  return out;
}

class HeraldctlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/heraldctl-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = new std::string(tmpl);
    cluster_ = new testing::CoreCluster(*root_, kNodes, kPartitions);
    // Manual transfers are what these tests check; the controller would even them out.
    cluster_->extra_args = {"--cluster.balance_leaders=false", "--log.level=debug"};
    servers_ = new std::string(cluster_->Servers());
    std::string error;
    for (int i = 0; i < kNodes; ++i) ASSERT_TRUE(cluster_->Start(i, &error)) << error;
  }

  static void TearDownTestSuite() {
    delete cluster_;  // kills the nodes
    cluster_ = nullptr;
    if (root_ != nullptr) std::filesystem::remove_all(*root_);
    delete root_;
    delete servers_;
  }

  // "127.0.0.1:port" of node `id` (1-based).
  static std::string Address(uint64_t id) {
    std::stringstream ss(*servers_);
    std::string a;
    for (uint64_t i = 0; i < id; ++i) std::getline(ss, a, ',');
    return a;
  }

  // heraldctl with --servers of the cluster.
  static CtlResult Ctl(std::vector<std::string> args, const std::string& stdin_text = "") {
    args.insert(args.begin(), "--servers=" + *servers_);
    return RunCtl(args, stdin_text);
  }

  // `partitions --json` once every partition has a leader (elections take a few ticks).
  static std::string PartitionsWithLeaders() {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    CtlResult r;
    while (std::chrono::steady_clock::now() < deadline) {
      r = Ctl({"partitions", "--json"});
      bool all = r.exit_code == 0;
      for (int p = 0; all && p < kPartitions; ++p) all = LeaderIn(r.out, p) != 0;
      if (all) return r.out;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "partitions never all had a leader:\n" << r.out << r.err;
    return r.out;
  }

  // Every node's log lines that contain `needle`, for failure messages.
  static std::string NodeLogLines(const std::string& needle) {
    std::string out;
    for (int i = 0; i < kNodes; ++i) {
      std::stringstream ss(cluster_->process(i)->log());
      for (std::string line; std::getline(ss, line);) {
        if (line.find(needle) == std::string::npos) continue;
        out += "node " + std::to_string(i + 1) + ": " + line + "\n";
      }
    }
    return out;
  }

  static std::string* root_;
  static std::string* servers_;
  static testing::CoreCluster* cluster_;
};

std::string* HeraldctlTest::root_ = nullptr;
std::string* HeraldctlTest::servers_ = nullptr;
testing::CoreCluster* HeraldctlTest::cluster_ = nullptr;

TEST_F(HeraldctlTest, PublishedMessageIsReadBackBySubscribe) {
  CtlResult pub = Ctl({"publish", "--topic=sensors/kitchen", "--message=21.5 C", "--qos=1"});
  ASSERT_EQ(pub.exit_code, 0) << pub.out << pub.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(pub.out, m, std::regex("partition (\\d+) offset (\\d+)")))
      << pub.out;
  const std::string partition = m[1].str(), offset = m[2].str();

  CtlResult sub = Ctl({"subscribe", "--filter=sensors/kitchen"});
  ASSERT_EQ(sub.exit_code, 0) << sub.out << sub.err;
  EXPECT_NE(sub.out.find(partition + ":" + offset + "  sensors/kitchen  21.5 C"), std::string::npos)
      << sub.out;

  // Lines of stdin are messages, in order; --json output is one object per message.
  CtlResult lines = Ctl({"publish", "--topic=sensors/hall", "--json"}, "one\ntwo\n");
  ASSERT_EQ(lines.exit_code, 0) << lines.out << lines.err;
  EXPECT_EQ(std::count(lines.out.begin(), lines.out.end(), '\n'), 2) << lines.out;
  CtlResult wild = Ctl({"subscribe", "--filter=sensors/+", "--json"});
  ASSERT_EQ(wild.exit_code, 0) << wild.out << wild.err;
  size_t one = wild.out.find("\"payload\":\"one\""), two = wild.out.find("\"payload\":\"two\"");
  EXPECT_NE(one, std::string::npos) << wild.out;
  EXPECT_NE(two, std::string::npos) << wild.out;
  EXPECT_LT(one, two) << wild.out;
  EXPECT_NE(wild.out.find("\"payload\":\"21.5 C\""), std::string::npos) << wild.out;

  // --from=latest without --follow: nothing committed after now.
  CtlResult latest = Ctl({"subscribe", "--filter=sensors/+", "--from=latest"});
  EXPECT_EQ(latest.exit_code, 0) << latest.err;
  EXPECT_EQ(latest.out, "");
}

TEST_F(HeraldctlTest, PartitionsListsEveryPartitionWithALeaderAndItsReplicas) {
  std::string json = PartitionsWithLeaders();
  for (int p = 0; p < kPartitions; ++p) {
    EXPECT_NE(LeaderIn(json, p), 0u) << "partition " << p << ":\n" << json;
    EXPECT_EQ(VotersIn(json, p), (std::vector<uint64_t>{1, 2, 3})) << json;
  }
  EXPECT_EQ(json.find("\"partition\":" + std::to_string(kPartitions)), std::string::npos);
  // Answered by its leader, a partition lists each replica's match index (every replica has at
  // least the leader's first entry once it is replicated).
  bool matched = false;
  for (int i = 0; i < 100 && !matched; ++i) {
    matched = std::regex_search(
        json, std::regex("\"match_index\":\\{\"1\":[1-9]\\d*,\"2\":[1-9]\\d*,\"3\":[1-9]\\d*\\}"));
    if (!matched) {
      std::this_thread::sleep_for(100ms);
      json = Ctl({"partitions", "--json"}).out;
    }
  }
  EXPECT_TRUE(matched) << json;
  CtlResult table = Ctl({"partitions"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(table.out.rfind("PARTITION", 0), 0u) << table.out;
  EXPECT_EQ(std::count(table.out.begin(), table.out.end(), '\n'), kPartitions + 1) << table.out;
}

TEST_F(HeraldctlTest, TransferLeaderMovesLeadershipAndPartitionsShowsIt) {
  std::string json = PartitionsWithLeaders();
  const int partition = 3;
  uint64_t leader = LeaderIn(json, partition);
  ASSERT_NE(leader, 0u);
  uint64_t target = leader % kNodes + 1;
  CtlResult r = Ctl({"transfer-leader", "--partition=" + std::to_string(partition),
                     "--to=" + std::to_string(target)});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err
                            << NodeLogLines("raft group " + std::to_string(partition + 1) + ":");
  EXPECT_NE(r.out.find("leader is node " + std::to_string(target)), std::string::npos) << r.out;
  // The target leads as soon as the command returns; every node's view may lag a heartbeat, but
  // the merged view prefers the newest term.
  EXPECT_EQ(LeaderIn(PartitionsWithLeaders(), partition), target);

  CtlResult bad = Ctl({"transfer-leader", "--partition=3", "--to=9"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("not a voter"), std::string::npos) << bad.err;
}

TEST_F(HeraldctlTest, StatusShowsEveryNode) {
  PartitionsWithLeaders();
  CtlResult json = Ctl({"status", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  for (int id = 1; id <= kNodes; ++id) {
    EXPECT_NE(json.out.find("{\"node_id\":" + std::to_string(id) + ","), std::string::npos)
        << json.out;
  }
  EXPECT_EQ(std::count(json.out.begin(), json.out.end(), '{'), 1 + kNodes) << json.out;
  EXPECT_EQ(json.out.find("\"answered\":false"), std::string::npos) << json.out;
  EXPECT_NE(json.out.find("\"partitions_without_leader\":0"), std::string::npos) << json.out;

  // Seeded with one node only: the others are found through its metadata.
  CtlResult one = RunCtl({"--servers=" + servers_->substr(0, servers_->find(',')), "status"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("3 node(s), 8 partitions, replication factor 3"), std::string::npos)
      << one.out;
  EXPECT_EQ(std::count(one.out.begin(), one.out.end(), '\n'), 2 + kNodes) << one.out;
}

TEST_F(HeraldctlTest, RemoveNodeRefusesToGoBelowTheReplicationFactor) {
  CtlResult r = Ctl({"remove-node", "2"});
  // The controller records the founding nodes shortly after the metadata group elects it.
  for (int i = 0; i < 100 && r.err.find("not initialized") != std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    r = Ctl({"remove-node", "2"});
  }
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("fewer than the replication factor"), std::string::npos) << r.err;
  r = Ctl({"remove-node", "9"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not a member"), std::string::npos) << r.err;
}

TEST_F(HeraldctlTest, AdminAnswersFollowersRequestsWithNotLeaderAndTheLeadersAddress) {
  const int partition = 5;
  uint64_t leader = LeaderIn(PartitionsWithLeaders(), partition);
  ASSERT_NE(leader, 0u);
  uint64_t follower = leader % kNodes + 1;
  auto stub = v1::Admin::NewStub(
      grpc::CreateChannel(Address(follower), grpc::InsecureChannelCredentials()));
  auto call = [&](auto method, const auto& req, auto* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    return ((*stub).*method)(&ctx, req, resp);
  };

  v1::TransferLeadershipRequest transfer;
  transfer.set_partition(partition);
  transfer.set_target_node_id(follower);
  v1::TransferLeadershipResponse transferred;
  grpc::Status st = call(&v1::Admin::Stub::TransferLeadership, transfer, &transferred);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::ErrorInfo info;
  ASSERT_TRUE(info.ParseFromString(st.error_details()));
  EXPECT_EQ(info.code(), v1::ERROR_CODE_NOT_LEADER);
  EXPECT_EQ(info.leader_hint().node_id(), leader);
  EXPECT_EQ("127.0.0.1:" + std::to_string(info.leader_hint().endpoint().port()), Address(leader));
  EXPECT_EQ(info.partition(), static_cast<uint32_t>(partition));

  transfer.set_metadata_group(true);
  st = call(&v1::Admin::Stub::TransferLeadership, transfer, &transferred);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ListPartitionsRequest list;
  list.add_partitions(2);
  list.add_partitions(0);
  v1::ListPartitionsResponse listed;
  ASSERT_TRUE(call(&v1::Admin::Stub::ListPartitions, list, &listed).ok());
  ASSERT_EQ(listed.partitions_size(), 2);
  EXPECT_EQ(listed.partitions(0).info().partition(), 2u);
  EXPECT_EQ(listed.partitions(1).info().partition(), 0u);
  EXPECT_EQ(listed.partitions(0).replicas_size(), 3);
  list.add_partitions(kPartitions);
  EXPECT_EQ(call(&v1::Admin::Stub::ListPartitions, list, &listed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::AddNodeResponse added;
  EXPECT_EQ(call(&v1::Admin::Stub::AddNode, v1::AddNodeRequest(), &added).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HeraldctlTest, UsageErrorsExitWithTwo) {
  EXPECT_EQ(RunCtl({"--bogus", "status"}).exit_code, 2);
  EXPECT_EQ(RunCtl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Ctl({"publish"}).exit_code, 2);  // no --topic
  EXPECT_EQ(Ctl({"remove-node"}).exit_code, 2);
  CtlResult help = RunCtl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("transfer-leader"), std::string::npos);
}

TEST_F(HeraldctlTest, UnreachableServersFailTheOperation) {
  int port = testing::PickFreePort();
  CtlResult r =
      RunCtl({"--servers=127.0.0.1:" + std::to_string(port), "--timeout=300ms", "status"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no server answered"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace herald
