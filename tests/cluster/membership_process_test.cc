// Membership changes of a live cluster of herald-core processes on loopback: five nodes start from
// --cluster.peers; while a client publishes with idempotent retries, node 5 is removed
// (Admin.RemoveNode: DRAINING, replicas moved away, gone from metadata) and a sixth node joins
// with --cluster.join (replicas moved onto it as learners then voters, leadership balanced onto
// it). Afterwards every acknowledged message must be read back exactly once, in per-topic order,
// from the partition leaders and from node 6's own database (received by snapshot and log).
// HERALD_CLUSTER_LONG=1 runs a longer variant: at least 30,000 messages instead of 3,000, so
// publishing goes on well after the membership has settled and the logs are compacted.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "herald/v1/admin.grpc.pb.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/common/partitioning.h"
#include "tests/support/partition_reader.h"
#include "tests/support/process.h"

namespace herald {
namespace {

using namespace std::chrono_literals;
using testing::Process;
using SteadyClock = std::chrono::steady_clock;

constexpr uint32_t kPartitions = 8;
constexpr int kTopics = 16;
int MinMessages() { return std::getenv("HERALD_CLUSTER_LONG") != nullptr ? 30000 : 3000; }
// Node 5 is drained and removed; node 6 joins through node 1.
constexpr uint64_t kRemoved = 5;
constexpr uint64_t kJoined = 6;
constexpr uint32_t kMaxLeadersPerNode = (kPartitions + 4) / 5 + 1;  // ceil(8/5)+1 = 3

long long MsSince(SteadyClock::time_point t) {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - t).count());
}

// Removes the temporary root last (declared before the nodes, so after they are killed).
struct TempRoot {
  std::string path;
  ~TempRoot() {
    if (!path.empty()) std::filesystem::remove_all(path);
  }
};

// herald-core processes with ids 1..6 on ports picked up front. Every process left running is
// killed (SIGKILL) on destruction; on a failed test the tail of every node's log is printed.
class Nodes {
 public:
  explicit Nodes(std::string root) : root_(std::move(root)) {
    for (uint64_t id = 1; id <= kJoined; ++id) ports_[id] = testing::PickFreePort();
  }
  ~Nodes() {
    if (!::testing::Test::HasFailure()) return;
    Drain();
    for (auto& [id, p] : procs_) {
      const std::string& log = p->log();
      std::printf("---- node %llu log (tail) ----\n%s\n", static_cast<unsigned long long>(id),
                  log.substr(log.size() > 6000 ? log.size() - 6000 : 0).c_str());
    }
  }

  std::string Address(uint64_t id) const { return "127.0.0.1:" + std::to_string(ports_.at(id)); }
  std::string DataDir(uint64_t id) const { return root_ + "/node" + std::to_string(id); }

  // Starts node `id` with `membership` (--cluster.peers=... or --cluster.join=...) and waits for
  // it to be ready; false with its log in `error` if it is not.
  bool Start(uint64_t id, const std::string& membership, std::string* error) {
    procs_[id] = std::make_unique<Process>(
        "herald-core",
        std::vector<std::string>{
            "--core.node_id=" + std::to_string(id), "--core.listen=" + Address(id), membership,
            "--cluster.id=membership-test", "--cluster.partitions=" + std::to_string(kPartitions),
            "--cluster.replication_factor=3", "--raft.tick=50ms", "--admin.listen=127.0.0.1:0",
            "--data_dir=" + DataDir(id), "--net.loops=1"});
    if (!procs_[id]->WaitForLine("herald-core ready", 30s).empty()) return true;
    *error = procs_[id]->log();
    return false;
  }

  // SIGTERM; the exit status (-1 on timeout or death by a signal).
  int StopGracefully(uint64_t id) {
    procs_[id]->Signal(SIGTERM);
    return procs_[id]->Wait(15s);
  }

  // Reads what running nodes wrote to stderr so that no pipe fills up and blocks a node.
  void Drain() {
    for (auto& [id, p] : procs_) {
      if (p->running()) p->WaitForLine("^never matches: herald drain$", 2ms);
    }
  }

 private:
  std::string root_;
  std::map<uint64_t, int> ports_;
  std::map<uint64_t, std::unique_ptr<Process>> procs_;
};

// Polls `pred` every `period` (draining the nodes' stderr) until it holds or `timeout` passes.
bool WaitUntil(Nodes& nodes, std::chrono::milliseconds timeout, const std::function<bool()>& pred,
               std::chrono::milliseconds period = 250ms) {
  auto deadline = SteadyClock::now() + timeout;
  while (true) {
    auto next = SteadyClock::now() + period;
    nodes.Drain();
    if (pred()) return true;
    if (SteadyClock::now() >= deadline) return false;
    std::this_thread::sleep_until(next);
  }
}

// One acknowledged message.
struct Acked {
  std::string topic, payload;
  uint32_t partition = 0;
  uint64_t offset = 0;  // 0: a duplicate whose offset was no longer remembered
};

// A publisher that finds partition leaders (by node id, 1..6) and retries with the same
// idempotency keys (adapted from cluster_process_test.cc). Without a leader hint it tries nodes
// 1..4, which run throughout.
class Publisher {
 public:
  explicit Publisher(const Nodes& nodes) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    for (uint64_t id = 1; id <= kJoined; ++id) {
      stubs_[id] = v1::Broker::NewStub(
          grpc::CreateCustomChannel(nodes.Address(id), grpc::InsecureChannelCredentials(), args));
    }
    std::random_device rd;
    producer_id_ = ((static_cast<uint64_t>(rd()) << 32) | rd()) | 1;
    leader_.assign(kPartitions, 1);
    seq_.assign(kPartitions, 0);
  }

  // Publishes `msgs` (one partition's, in order) until acknowledged; false if the deadline
  // passes or `quit` is set. Appends the acknowledgements to `out`.
  bool PublishPartition(uint32_t partition, const std::vector<v1::Message>& msgs,
                        std::vector<Acked>* out, const std::atomic<bool>& quit) {
    v1::PublishRequest req;
    for (const auto& m : msgs) {
      v1::Message* pm = req.add_messages();
      *pm = m;
      pm->set_producer_id(producer_id_);
      pm->set_sequence(++seq_[partition]);
    }
    auto deadline = SteadyClock::now() + 60s;
    while (SteadyClock::now() < deadline && !quit) {
      uint64_t node = leader_[partition];
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 2s);
      v1::PublishResponse resp;
      grpc::Status st = stubs_[node]->Publish(&ctx, req, &resp);
      if (!st.ok()) {
        v1::ErrorInfo e;
        e.ParseFromString(st.error_details());
        Redirect(partition, node, e);
        std::this_thread::sleep_for(50ms);
        continue;
      }
      bool all_ok = resp.results_size() == req.messages_size();
      for (const auto& r : resp.results()) {
        if (r.has_error() && r.error().code() != v1::ERROR_CODE_DUPLICATE) {
          all_ok = false;
          Redirect(partition, node, r.error());
          break;
        }
      }
      if (all_ok) {
        for (int i = 0; i < resp.results_size(); ++i) {
          out->push_back({msgs[i].topic(), msgs[i].payload(), resp.results(i).partition(),
                          resp.results(i).offset()});
        }
        return true;
      }
      std::this_thread::sleep_for(30ms);
    }
    return false;
  }

  // Reads a partition completely from its leader.
  std::vector<v1::Message> ReadPartition(uint32_t partition) {
    return testing::FetchWholePartition(
        partition, [&] { return stubs_[leader_[partition]].get(); },
        [&](const v1::ErrorInfo& e) { Redirect(partition, leader_[partition], e); });
  }

 private:
  void Redirect(uint32_t partition, uint64_t node, const v1::ErrorInfo& e) {
    uint64_t hint = e.leader_hint().node_id();
    leader_[partition] = hint >= 1 && hint <= kJoined && hint != node ? hint : node % 4 + 1;
  }

  std::map<uint64_t, std::unique_ptr<v1::Broker::Stub>> stubs_;
  uint64_t producer_id_;
  std::vector<uint64_t> leader_;
  std::vector<uint64_t> seq_;
};

using testing::ByTopic;
using testing::History;

History ByTopic(const std::vector<Acked>& acked) {
  History h;
  for (const auto& a : acked) h[a.topic].push_back(a.payload);
  return h;
}


// The cluster as node 1 sees it.
struct View {
  bool ok = false;
  v1::GetClusterStatusResponse status;
  v1::ListPartitionsResponse partitions;

  const v1::NodeInfo* Node(uint64_t id) const {
    for (const auto& n : status.metadata().nodes()) {
      if (n.node_id() == id) return &n;
    }
    return nullptr;
  }
  const v1::NodeStatus* Load(uint64_t id) const {
    for (const auto& n : status.nodes()) {
      if (n.node_id() == id) return &n;
    }
    return nullptr;
  }
  uint32_t LeaderCount(uint64_t id) const { return Load(id) ? Load(id)->leader_count() : 0u; }
  bool Hosts(const v1::PartitionInfo& info, uint64_t id) const {
    return std::count(info.voters().begin(), info.voters().end(), id) +
               std::count(info.learners().begin(), info.learners().end(), id) >
           0;
  }
  std::vector<uint32_t> VoterOf(uint64_t id) const {
    std::vector<uint32_t> out;
    for (const auto& p : partitions.partitions()) {
      if (std::count(p.info().voters().begin(), p.info().voters().end(), id)) {
        out.push_back(p.info().partition());
      }
    }
    return out;
  }
  bool HostedAnywhere(uint64_t id) const {
    for (const auto& p : partitions.partitions()) {
      if (Hosts(p.info(), id)) return true;
    }
    return false;
  }
  // Every partition listed, with a leader that answered.
  bool AllLed() const {
    if (!ok || partitions.partitions_size() != static_cast<int>(kPartitions) ||
        status.partitions_without_leader() != 0) {
      return false;
    }
    for (const auto& p : partitions.partitions()) {
      if (p.has_error() || p.info().leader_node_id() == 0) return false;
    }
    return true;
  }
  bool AllThreeVoters() const {
    for (const auto& p : partitions.partitions()) {
      if (p.info().voters_size() != 3) return false;
    }
    return partitions.partitions_size() == static_cast<int>(kPartitions);
  }

  std::string Describe() const {
    if (!ok) return "(node 1 did not answer)";
    std::string s = "controller " + std::to_string(status.controller_node_id()) +
                    ", partitions without leader " +
                    std::to_string(status.partitions_without_leader()) + "\n";
    for (const auto& n : status.metadata().nodes()) {
      s += "  node " + std::to_string(n.node_id()) + " " + v1::NodeState_Name(n.state()) +
           " leads " + std::to_string(LeaderCount(n.node_id())) + " replicas " +
           std::to_string(Load(n.node_id()) ? Load(n.node_id())->replica_count() : 0u) + "\n";
    }
    for (const auto& p : partitions.partitions()) {
      s += "  partition " + std::to_string(p.info().partition()) + " voters [";
      for (uint64_t v : p.info().voters()) s += " " + std::to_string(v);
      s += " ] learners [";
      for (uint64_t l : p.info().learners()) s += " " + std::to_string(l);
      s += " ] leader " + std::to_string(p.info().leader_node_id()) +
           (p.has_error() ? " error: " + p.error().message() : "") + "\n";
    }
    return s;
  }
};

View Observe(v1::Admin::Stub& admin) {
  View v;
  grpc::ClientContext c1, c2;
  c1.set_deadline(std::chrono::system_clock::now() + 5s);
  c2.set_deadline(std::chrono::system_clock::now() + 5s);
  v.ok = admin.GetClusterStatus(&c1, v1::GetClusterStatusRequest(), &v.status).ok() &&
         admin.ListPartitions(&c2, v1::ListPartitionsRequest(), &v.partitions).ok();
  return v;
}

void PrintDistribution(const char* when, const View& v) {
  std::printf("%s:\n", when);
  for (const auto& n : v.status.nodes()) {
    std::printf("  node %llu: leads %u partition(s), %u replica(s)\n",
                static_cast<unsigned long long>(n.node_id()), n.leader_count(), n.replica_count());
  }
}

TEST(MembershipProcessTest, NodeDrainsAndNodeJoinsWhilePublishing) {
  char tmpl[] = "/tmp/herald-membership-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  TempRoot root{tmpl};
  Nodes nodes(root.path);
  std::string peers, error;
  for (uint64_t id = 1; id <= 5; ++id) {
    peers += (id > 1 ? "," : "") + std::to_string(id) + "=" + nodes.Address(id);
  }

  // 1-2. Five nodes; every partition gets a leader.
  const auto t_start = SteadyClock::now();
  for (uint64_t id = 1; id <= 5; ++id) {
    ASSERT_TRUE(nodes.Start(id, "--cluster.peers=" + peers, &error)) << error;
  }
  auto admin =
      v1::Admin::NewStub(grpc::CreateChannel(nodes.Address(1), grpc::InsecureChannelCredentials()));
  View v;
  ASSERT_TRUE(WaitUntil(nodes, 30s, [&] {
    v = Observe(*admin);
    return v.AllLed();
  })) << v.Describe();
  std::printf("5 nodes started, every partition led: %lld ms\n", MsSince(t_start));
  ASSERT_EQ(v.status.metadata().nodes_size(), 5) << v.Describe();
  ASSERT_NE(v.Node(kRemoved), nullptr) << v.Describe();
  EXPECT_EQ(v.Node(kRemoved)->state(), v1::NODE_STATE_ACTIVE);
  ASSERT_FALSE(v.VoterOf(kRemoved).empty()) << "node 5 hosts nothing to drain\n" << v.Describe();
  EXPECT_EQ(v.Node(kJoined), nullptr) << v.Describe();
  PrintDistribution("initial distribution", v);

  // 3. Publishing in the background until told to stop (and at least MinMessages()).
  Publisher pub(nodes);
  std::mutex mu;
  std::vector<Acked> acked;  // guarded by mu
  std::string pub_error;     // guarded by mu
  std::atomic<size_t> acked_count{0};
  std::atomic<bool> stop{false}, quit{false}, finished{false};
  const int min_messages = MinMessages();
  auto publish = [&] {
    for (int i = 0; !quit && !(stop && i >= min_messages);) {
      std::map<uint32_t, std::vector<v1::Message>> parts;
      for (int k = 0; k < kTopics; ++k, ++i) {
        v1::Message m;
        m.set_topic("sensors/" + std::to_string(i % kTopics));
        m.set_payload("m-" + std::to_string(i));
        parts[PartitionFor(m.topic(), kPartitions)].push_back(m);
      }
      for (auto& [p, msgs] : parts) {
        std::vector<Acked> got;
        if (!pub.PublishPartition(p, msgs, &got, quit)) {
          std::lock_guard<std::mutex> l(mu);
          if (!quit) {
            pub_error =
                "partition " + std::to_string(p) + " never acknowledged " + msgs.front().payload();
          }
          return;  // the partition's sequence numbers are spent: stop publishing altogether
        }
        std::lock_guard<std::mutex> l(mu);
        acked.insert(acked.end(), got.begin(), got.end());
        acked_count += got.size();
      }
      std::this_thread::sleep_for(40ms);
    }
  };
  std::thread publisher([&] {
    publish();
    finished = true;
  });
  struct Joiner {
    std::thread& t;
    std::atomic<bool>& quit;
    ~Joiner() {
      quit = true;
      if (t.joinable()) t.join();
    }
  } joiner{publisher, quit};
  auto publish_error = [&] {
    std::lock_guard<std::mutex> l(mu);
    return pub_error;
  };
  ASSERT_TRUE(WaitUntil(nodes, 60s, [&] { return acked_count >= 500; }))
      << acked_count.load() << " acknowledged; " << publish_error();
  std::printf("publishing: %zu acknowledged before the membership changes\n", acked_count.load());

  // 4. Remove node 5, add node 6, while publishing.
  const auto t_change = SteadyClock::now();
  v1::RemoveNodeRequest remove;
  remove.set_node_id(kRemoved);
  v1::RemoveNodeResponse removed;
  grpc::Status st;
  WaitUntil(nodes, 20s, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    st = admin->RemoveNode(&ctx, remove, &removed);
    // Retried only while the cluster says "not now" (a membership change in progress, no
    // controller reachable).
    return st.error_code() != grpc::StatusCode::ABORTED &&
           st.error_code() != grpc::StatusCode::UNAVAILABLE &&
           st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
  });
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(removed.node().node_id(), kRemoved);
  EXPECT_EQ(removed.node().state(), v1::NODE_STATE_DRAINING);
  std::printf("RemoveNode(5) answered (DRAINING): %lld ms\n", MsSince(t_change));

  const auto t_join = SteadyClock::now();
  ASSERT_TRUE(nodes.Start(kJoined, "--cluster.join=" + nodes.Address(1), &error)) << error;
  std::printf("node 6 started with --cluster.join and ready: %lld ms\n", MsSince(t_join));

  // Each milestone's time since RemoveNode, printed when first observed.
  std::map<std::string, long long> milestones;
  auto mark = [&](const std::string& name, bool reached) {
    if (reached && milestones.emplace(name, MsSince(t_change)).second) {
      std::printf("  %-48s %6lld ms (%zu acknowledged)\n", name.c_str(), milestones[name],
                  acked_count.load());
    }
    return reached;
  };
  bool settled = WaitUntil(nodes, 120s, [&] {
    v = Observe(*admin);
    if (!v.ok) return false;
    const v1::NodeInfo* n5 = v.Node(kRemoved);
    const v1::NodeInfo* n6 = v.Node(kJoined);
    bool joined = mark("node 6 ACTIVE in metadata", n6 && n6->state() == v1::NODE_STATE_ACTIVE);
    bool voter = mark("node 6 voter of a partition", !v.VoterOf(kJoined).empty());
    bool leads = mark("node 6 leads a partition (leader_count > 0)", v.LeaderCount(kJoined) > 0);
    bool unhosted = mark("node 5 hosts no replica", !v.HostedAnywhere(kRemoved));
    bool gone = mark("node 5 gone from metadata", n5 == nullptr);
    bool steady =
        mark("every partition has 3 voters and a leader", v.AllThreeVoters() && v.AllLed());
    return joined && voter && leads && unhosted && gone && steady;
  });
  std::string reached;
  for (const auto& [name, ms] : milestones) reached += " [" + name + "]";
  ASSERT_TRUE(settled) << "membership changes not done after 120 s; reached:" << reached << "\n"
                       << v.Describe() << publish_error();
  std::printf("membership changes done: %lld ms after RemoveNode, %zu acknowledged\n",
              MsSince(t_change), acked_count.load());
  EXPECT_EQ(v.Load(kRemoved), nullptr) << "node 5 still has a NodeStatus\n" << v.Describe();
  PrintDistribution("after the membership changes", v);

  // Node 5 hosts nothing: stopping it must not stop publishing.
  const auto t_stop5 = SteadyClock::now();
  EXPECT_EQ(nodes.StopGracefully(kRemoved), 0);
  size_t before = acked_count;
  EXPECT_TRUE(WaitUntil(nodes, 30s, [&] { return acked_count >= before + 300; }))
      << "publishing stalled after node 5 stopped: " << acked_count.load() - before << " more; "
      << publish_error();
  std::printf("node 5 stopped; %zu more acknowledged within %lld ms\n", acked_count.load() - before,
              MsSince(t_stop5));
  auto all_led = [&] {
    v = Observe(*admin);
    return v.AllLed();
  };
  EXPECT_TRUE(WaitUntil(nodes, 10s, all_led))
      << "a partition lost its leader after node 5 stopped\n"
      << v.Describe();

  // 5. Stop publishing (after at least MinMessages()); every acknowledged message is in its
  // partition exactly once, in per-topic order.
  stop = true;
  auto publisher_finished = [&] { return finished.load(); };
  EXPECT_TRUE(WaitUntil(nodes, 120s, publisher_finished, 50ms)) << "the publisher did not finish";
  quit = true;
  publisher.join();
  ASSERT_EQ(publish_error(), "");
  std::vector<Acked> all_acked;
  {
    std::lock_guard<std::mutex> l(mu);
    all_acked = acked;
  }
  std::printf("published: %zu messages acknowledged in %lld ms\n", all_acked.size(),
              MsSince(t_start));
  ASSERT_GE(all_acked.size(), static_cast<size_t>(min_messages));

  // Give followers a moment to have every committed entry before the replicas are read.
  WaitUntil(nodes, 10s, [&] {
    View w = Observe(*admin);
    if (!w.AllLed()) return false;
    for (const auto& p : w.partitions.partitions()) {
      for (const auto& r : p.replicas()) {
        if (r.match_index() < p.commit_index()) return false;
      }
    }
    return true;
  });
  std::this_thread::sleep_for(500ms);

  std::vector<v1::Message> from_leaders;
  std::map<std::pair<uint32_t, uint64_t>, std::pair<std::string, std::string>> at;
  for (uint32_t p = 0; p < kPartitions; ++p) {
    auto msgs = pub.ReadPartition(p);
    for (const auto& m : msgs) at[{p, m.offset()}] = {m.topic(), m.payload()};
    from_leaders.insert(from_leaders.end(), msgs.begin(), msgs.end());
  }
  EXPECT_EQ(from_leaders.size(), all_acked.size());
  EXPECT_TRUE(ByTopic(from_leaders) == ByTopic(all_acked))
      << "leaders' history differs from what was acknowledged";
  size_t wrong_partition = 0, wrong_offset = 0, with_offset = 0;
  for (const auto& a : all_acked) {
    if (a.partition != PartitionFor(a.topic, kPartitions)) ++wrong_partition;
    if (a.offset == 0) continue;
    ++with_offset;
    auto it = at.find({a.partition, a.offset});
    if (it == at.end() || it->second != std::make_pair(a.topic, a.payload)) {
      ++wrong_offset;
    }
  }
  EXPECT_EQ(wrong_partition, 0u);
  EXPECT_EQ(wrong_offset, 0u) << "of " << with_offset << " acknowledged offsets";
  std::printf("read back from the leaders: %zu messages (%zu acknowledged offsets checked)\n",
              from_leaders.size(), with_offset);

  // 6. Leadership is spread over the five remaining nodes.
  bool spread = WaitUntil(nodes, 20s, [&] {
    v = Observe(*admin);
    uint32_t sum = 0, max = 0;
    for (const auto& n : v.status.nodes()) {
      sum += n.leader_count();
      max = std::max(max, n.leader_count());
    }
    return v.AllLed() && sum == kPartitions && max <= kMaxLeadersPerNode;
  });
  PrintDistribution("final distribution", v);
  EXPECT_TRUE(spread) << "some node leads more than " << kMaxLeadersPerNode
                      << " partitions (or leader counts do not add up to " << kPartitions << ")\n"
                      << v.Describe();
  EXPECT_GT(v.LeaderCount(kJoined), 0u) << v.Describe();
  const std::vector<uint32_t> node6_partitions = v.VoterOf(kJoined);
  ASSERT_FALSE(node6_partitions.empty()) << v.Describe();

  // Node 6's own database holds the acknowledged messages of its partitions, after an orderly
  // stop (node 6 first, while the leaders still run).
  EXPECT_EQ(nodes.StopGracefully(kJoined), 0);
  for (uint64_t id = 1; id <= 4; ++id) EXPECT_EQ(nodes.StopGracefully(id), 0) << "node " << id;
  auto replica = testing::ReadStoppedReplica(nodes.DataDir(kJoined), node6_partitions);
  size_t held = 0;
  for (uint32_t p : node6_partitions) {
    std::vector<Acked> expected;
    for (const auto& a : all_acked) {
      if (a.partition == p) expected.push_back(a);
    }
    const std::vector<v1::Message>& got = replica[p];
    held += got.size();
    EXPECT_EQ(got.size(), expected.size()) << "node 6, partition " << p;
    EXPECT_TRUE(ByTopic(got) == ByTopic(expected))
        << "node 6's history of partition " << p << " differs from what was acknowledged";
    size_t offsets_differ = 0;
    std::map<uint64_t, const v1::Message*> by_offset;
    for (const auto& m : got) by_offset[m.offset()] = &m;
    for (const auto& a : expected) {
      if (a.offset == 0) continue;
      auto it = by_offset.find(a.offset);
      if (it == by_offset.end() || it->second->payload() != a.payload) ++offsets_differ;
    }
    EXPECT_EQ(offsets_differ, 0u) << "node 6, partition " << p;
  }
  std::printf("node 6's database: %zu messages in %zu partition(s)\n", held,
              node6_partitions.size());
}

}  // namespace
}  // namespace herald
