// Three herald-core processes, each in a network namespace of its own, while a client publishes
// on 20 topics with idempotent retries: the leader of partition 0 is cut off from the other two
// nodes for 20 s (packets dropped silently; the client still reaches every node), then the
// network heals. Checked: the majority elects new leaders and keeps acknowledging; the cut-off
// node acknowledges nothing (Raft check-quorum: it steps down; what it proposed never commits);
// no leadership is handed to it while it is unreachable (a leader takes no publishes while a
// transfer runs, so that would stall partitions); after healing, it catches up, and every
// acknowledged message is read back exactly once, in per-topic order, from the leaders and from
// every replica's own database.
//
// Needs root, iproute2 and nftables (tools/dev installs them); skipped with the reason otherwise.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <thread>

#include "herald/v1/admin.grpc.pb.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/common/partitioning.h"
#include "tests/support/cluster_publisher.h"
#include "tests/support/core_cluster.h"
#include "tests/support/netns_lab.h"
#include "tests/support/partition_reader.h"
#include "tests/support/process.h"

namespace herald {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::ByTopic;
using testing::History;

constexpr int kNodes = 3;
constexpr uint32_t kPartitions = 8;
constexpr int kTopics = 20;

long long MillisSince(Clock::time_point t) {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

// Lines of `log` in which the controller handed (or tried to hand) a partition's leadership to
// node `to` (1-based).
int TransfersTo(const std::string& log, int to) {
  std::regex re("controller: partition [0-9]+ leadership [0-9]+ -> " + std::to_string(to) + " ");
  return static_cast<int>(
      std::distance(std::sregex_iterator(log.begin(), log.end(), re), std::sregex_iterator()));
}

// Each partition's last offset as node `node` itself holds it (ListPartitions, local_only).
std::map<uint32_t, uint64_t> LocalLastOffsets(const std::string& address) {
  auto stub = v1::Admin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  v1::ListPartitionsRequest req;
  req.set_local_only(true);
  v1::ListPartitionsResponse resp;
  std::map<uint32_t, uint64_t> out;
  if (!stub->ListPartitions(&ctx, req, &resp).ok()) return out;
  for (const v1::PartitionStatus& p : resp.partitions()) {
    out[p.info().partition()] = p.last_offset();
  }
  return out;
}

// A topic of partition `p`.
std::string TopicOf(uint32_t p) {
  for (int k = 0;; ++k) {
    std::string t = "probe/" + std::to_string(k);
    if (PartitionFor(t, kPartitions) == p) return t;
  }
}

class Workload {
 public:
  explicit Workload(testing::ClusterPublisher* pub) : pub_(pub) {}

  // Publishes the next `n` messages (round-robin over the topics), each partition's share as
  // one request; records what was acknowledged. The longest single partition publish, in ms,
  // goes to *slowest.
  bool Publish(int n, long long* slowest = nullptr) {
    std::map<uint32_t, std::vector<v1::Message>> parts;
    for (int i = next_; i < next_ + n; ++i) {
      v1::Message m;
      m.set_topic("sensors/" + std::to_string(i % kTopics));
      m.set_payload("m-" + std::to_string(i));
      parts[PartitionFor(m.topic(), kPartitions)].push_back(m);
    }
    next_ += n;
    for (auto& [p, msgs] : parts) {
      auto start = Clock::now();
      if (!pub_->PublishPartition(p, msgs)) {
        ADD_FAILURE() << "partition " << p << " never acknowledged";
        return false;
      }
      if (slowest != nullptr) *slowest = std::max(*slowest, MillisSince(start));
      for (const auto& m : msgs) acked_[m.topic()].push_back(m.payload());
      if (p == 0) ++partition0_acks_;
    }
    return true;
  }

  const History& acked() const { return acked_; }
  int count() const { return next_; }
  int partition0_acks() const { return partition0_acks_; }

 private:
  testing::ClusterPublisher* pub_;
  History acked_;
  int next_ = 0;
  int partition0_acks_ = 0;
};

class PartitionProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    lab_ = testing::NetnsLab::Create(kNodes, &why);
    if (lab_ == nullptr) GTEST_SKIP() << "no network namespaces here: " << why;
    char tmpl[] = "/tmp/herald-partition-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    cluster_ = std::make_unique<testing::CoreCluster>(root_, kNodes, kPartitions);
    std::vector<std::string> hosts;
    std::vector<std::vector<std::string>> prefixes;
    for (int i = 0; i < kNodes; ++i) {
      hosts.push_back(lab_->Host(i));
      prefixes.push_back(lab_->Prefix(i));
    }
    cluster_->Place(hosts, prefixes);
    std::string error;
    for (int i = 0; i < kNodes; ++i) ASSERT_TRUE(cluster_->Start(i, &error)) << error;
    for (int i = 0; i < kNodes; ++i) addresses_.push_back(cluster_->Address(i));
  }
  void TearDown() override {
    cluster_.reset();  // before the namespaces go
    lab_.reset();
    if (!root_.empty()) std::filesystem::remove_all(root_);
  }

  std::unique_ptr<testing::NetnsLab> lab_;
  std::string root_;
  std::unique_ptr<testing::CoreCluster> cluster_;
  std::vector<std::string> addresses_;
};

TEST_F(PartitionProcessTest, CutOffLeaderStepsDownAndCatchesUpWithoutLoss) {
  testing::CoreCluster& cluster = *cluster_;
  testing::ClusterPublisher pub(addresses_, kPartitions);
  Workload work(&pub);
  std::string why;
  testing::NetnsLab* lab = lab_.get();

  ASSERT_TRUE(work.Publish(2'000));
  const int cut = pub.LeaderOf(0);
  std::vector<int> transfers_before(kNodes);
  for (int i = 0; i < kNodes; ++i)
    transfers_before[i] = TransfersTo(cluster.process(i)->log(), cut + 1);
  std::printf("cutting node %d (leader of partition 0) off from the other nodes for 20 s\n",
              cut + 1);
  ASSERT_TRUE(lab->Isolate(cut, &why)) << why;
  const auto cut_at = Clock::now();

  // The majority goes on; note when partition 0 is acknowledged again.
  long long failover_ms = -1, slowest_after_failover = 0;
  const int p0_before = work.partition0_acks();
  while (Clock::now() - cut_at < 20s) {
    long long slowest = 0;
    ASSERT_TRUE(work.Publish(100, &slowest));
    std::this_thread::sleep_for(20ms);
    if (failover_ms < 0 && work.partition0_acks() > p0_before) {
      failover_ms = MillisSince(cut_at);
      std::printf("failover: partition 0 acknowledged again %lld ms after the cut\n", failover_ms);
    } else if (failover_ms >= 0) {
      slowest_after_failover = std::max(slowest_after_failover, slowest);
    }
  }
  ASSERT_GE(failover_ms, 0) << "partition 0 was never acknowledged during the cut";
  std::printf("slowest partition publish after the failover, during the cut: %lld ms\n",
              slowest_after_failover);

  // The cut-off node acknowledges nothing, whichever partition (it may refuse at once or never
  // answer). Probe topics are never acknowledged, so they must not appear anywhere later.
  {
    uint64_t probe_producer = 0x5eed0000u + static_cast<uint64_t>(::getpid());
    for (uint32_t p = 0; p < kPartitions; ++p) {
      const std::string topic = TopicOf(p);
      v1::PublishRequest req;
      v1::Message* m = req.add_messages();
      m->set_topic(topic);
      m->set_payload("from the minority");
      m->set_producer_id(probe_producer);
      m->set_sequence(1);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 2s);
      v1::PublishResponse resp;
      grpc::Status st = pub.stub(cut)->Publish(&ctx, req, &resp);
      bool acknowledged = st.ok() && resp.results_size() == 1 && !resp.results(0).has_error();
      EXPECT_FALSE(acknowledged) << "node " << cut + 1 << ", cut off, acknowledged a publish on "
                                 << "partition " << p;
    }
  }
  for (int i = 0; i < kNodes; ++i) {
    if (i == cut) continue;
    EXPECT_EQ(TransfersTo(cluster.process(i)->log(), cut + 1), transfers_before[i])
        << "node " << i + 1 << "'s controller handed leadership to the unreachable node " << cut + 1
        << ":\n"
        << cluster.process(i)->log();
  }

  std::printf("healing the network\n");
  ASSERT_TRUE(lab->Heal(cut, &why)) << why;
  const auto healed_at = Clock::now();
  ASSERT_TRUE(work.Publish(2'000));

  // The node that was cut off catches up with every partition's leader.
  std::map<uint32_t, uint64_t> want;
  for (uint32_t p = 0; p < kPartitions; ++p) {
    auto msgs = pub.ReadPartition(p);
    want[p] = msgs.empty() ? 0 : msgs.back().offset();
  }
  bool caught_up = false;
  while (!caught_up && Clock::now() - healed_at < 60s) {
    caught_up = LocalLastOffsets(cluster.Address(cut)) == want;
    if (!caught_up) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(caught_up) << "node " << cut + 1 << " did not catch up within 60 s of healing";
  std::printf("node %d caught up %lld ms after healing\n", cut + 1, MillisSince(healed_at));

  std::printf("%d messages acknowledged\n", work.count());
  // From the leaders.
  std::vector<v1::Message> all;
  for (uint32_t p = 0; p < kPartitions; ++p) {
    auto msgs = pub.ReadPartition(p);
    all.insert(all.end(), msgs.begin(), msgs.end());
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(work.count()));
  EXPECT_TRUE(ByTopic(all) == work.acked())
      << "leaders' history differs from what was acknowledged";

  // From every replica's own state, after an orderly stop.
  for (int i = 0; i < kNodes; ++i) EXPECT_EQ(cluster.StopGracefully(i), 0);
  for (int i = 0; i < kNodes; ++i) {
    std::vector<v1::Message> replica =
        testing::ReadStoppedReplicaAll(cluster.DataDir(i), kPartitions);
    EXPECT_EQ(replica.size(), static_cast<size_t>(work.count())) << "node " << i + 1;
    EXPECT_TRUE(ByTopic(replica) == work.acked()) << "node " << i + 1 << "'s history differs";
  }
}

// One of the three cores cut off from everyone, the edge included, for 30 s while MQTT clients
// publish and subscribe at QoS 1 through a herald-edge (herald-bench mqtt: 5 publishers, 5
// subscribers, 10 topics, 500 msg/s). The edge notices (gRPC keepalive, the
// publish timeout), moves that node's partitions, publishes and subscriptions alike, to their new
// leaders, and delivers at the full rate again long before the node returns, and again soon
// after it returns (when it may lead partitions again); nothing is lost or duplicated.
TEST_F(PartitionProcessTest, EdgeKeepsDeliveringWhileACoreIsCutOff) {
  // The node leading partition 0.
  testing::ClusterPublisher pub(addresses_, kPartitions);
  v1::Message hello;
  hello.set_topic(TopicOf(0));
  hello.set_payload("hello");
  ASSERT_TRUE(pub.PublishPartition(0, {hello}));
  const int cut = pub.LeaderOf(0);

  const std::string mqtt_port = std::to_string(testing::PickFreePort());
  testing::Process edge(
      "herald-edge",
      {"--edge.core=" + cluster_->Servers(), "--edge.partitions=" + std::to_string(kPartitions),
       "--mqtt.listen=127.0.0.1:" + mqtt_port,
       "--mqtt.tls_listen=", "--http.listen=", "--admin.listen=127.0.0.1:0"});
  ASSERT_FALSE(edge.WaitForLine("herald-edge ready").empty()) << edge.log();
  // Progress lines go to stderr and the summary to stdout: both to the log.
  testing::Process bench("herald-bench",
                         {"mqtt", "--port", mqtt_port, "--publishers", "5", "--subscribers", "5",
                          "--topics", "10", "--qos", "1", "--rate", "100", "--duration", "45"},
                         {"/bin/sh", "-c", "exec \"$0\" \"$@\" 1>&2"});
  ASSERT_FALSE(bench.WaitForLine(R"(^ +8\.0s +sent)", 30s).empty()) << bench.log();
  std::printf("cutting node %d (leader of partition 0) off from everyone for 30 s\n", cut + 1);
  std::string why;
  ASSERT_TRUE(lab_->Isolate(cut, &why, /*from_everyone=*/true)) << why;
  ASSERT_FALSE(bench.WaitForLine(R"(^ +38\.0s +sent)", 40s).empty()) << bench.log();
  std::printf("healing the network\n");
  ASSERT_TRUE(lab_->Heal(cut, &why)) << why;
  ASSERT_EQ(bench.Wait(60s), 0) << bench.log();
  const std::string& log = bench.log();

  // Seconds 28-37 of the run (20-29 s into the cut, after keepalive's 15 s): every second
  // delivers about what was sent. Seconds 43-45 (5-7 s after healing, when the node may lead
  // partitions again): publishing and delivery at the full rate (500 msg/s).
  std::regex line(R"(\n +([0-9]+)\.[0-9]s +sent +([0-9]+)/s +received +([0-9]+)/s)");
  int checked = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator();
       ++it) {
    const int second = std::stoi((*it)[1]);
    const double sent = std::stod((*it)[2]), received = std::stod((*it)[3]);
    if (second >= 28 && second <= 37) {
      EXPECT_GE(received, 0.9 * sent) << "second " << second << " of the run, cut at 8 s";
      ++checked;
    } else if (second >= 43 && second <= 45) {
      EXPECT_GE(sent, 450) << "second " << second << " of the run, healed at 38 s";
      EXPECT_GE(received, 450) << "second " << second << " of the run, healed at 38 s";
      ++checked;
    }
  }
  EXPECT_GE(checked, 12) << log;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"re("lost":([0-9]+),"duplicates":([0-9]+))re")))
      << log;
  EXPECT_EQ(m[1], "0") << "messages lost:\n" << log;
  EXPECT_EQ(m[2], "0") << "messages duplicated:\n" << log;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"re("lost_connections":([0-9]+))re"))) << log;
  EXPECT_EQ(m[1], "0") << log;
  std::printf("%s\n", log.substr(log.rfind("mqtt: ")).c_str());
}

}  // namespace
}  // namespace herald
