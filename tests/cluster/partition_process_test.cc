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

TEST(PartitionProcessTest, CutOffLeaderStepsDownAndCatchesUpWithoutLoss) {
  std::string why;
  std::unique_ptr<testing::NetnsLab> lab = testing::NetnsLab::Create(kNodes, &why);
  if (lab == nullptr) GTEST_SKIP() << "no network namespaces here: " << why;
  char tmpl[] = "/tmp/herald-partition-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string root = tmpl;
  testing::CoreCluster cluster(root, kNodes, kPartitions);
  std::vector<std::string> hosts;
  std::vector<std::vector<std::string>> prefixes;
  for (int i = 0; i < kNodes; ++i) {
    hosts.push_back(lab->Host(i));
    prefixes.push_back(lab->Prefix(i));
  }
  cluster.Place(hosts, prefixes);
  std::string error;
  for (int i = 0; i < kNodes; ++i) ASSERT_TRUE(cluster.Start(i, &error)) << error;
  std::vector<std::string> addresses;
  for (int i = 0; i < kNodes; ++i) addresses.push_back(cluster.Address(i));
  testing::ClusterPublisher pub(addresses, kPartitions);
  Workload work(&pub);

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
      std::string topic;
      for (int k = 0; topic.empty(); ++k) {
        std::string t = "probe/" + std::to_string(k);
        if (PartitionFor(t, kPartitions) == p) topic = t;
      }
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
  std::vector<uint32_t> partitions;
  for (uint32_t p = 0; p < kPartitions; ++p) partitions.push_back(p);
  for (int i = 0; i < kNodes; ++i) {
    std::vector<v1::Message> replica;
    for (auto& [p, msgs] : testing::ReadStoppedReplica(cluster.DataDir(i), partitions)) {
      replica.insert(replica.end(), msgs.begin(), msgs.end());
    }
    EXPECT_EQ(replica.size(), static_cast<size_t>(work.count())) << "node " << i + 1;
    EXPECT_TRUE(ByTopic(replica) == work.acked()) << "node " << i + 1 << "'s history differs";
  }
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace herald
