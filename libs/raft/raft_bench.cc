// raft_bench: replicates small entries between three in-memory nodes on one thread and reports
// entries committed per second and heap allocations per entry.
//
// Each iteration proposes `batch` 8-byte entries to the leader and runs the three hosts (persist
// into MemoryStorage, deliver messages, apply) until the leader has applied all of them. The
// allocation count comes from a replaced global operator new in this binary.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "libs/raft/node.h"
#include "libs/raft/storage.h"

namespace {
uint64_t g_allocations = 0;  // single-threaded benchmark
}  // namespace

// GCC cannot see that these replace the global pair and warns that free() does not match new.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace herald::raft {
namespace {

struct BenchNode {
  std::unique_ptr<MemoryStorage> storage;
  std::unique_ptr<Node> node;
  uint64_t applied = 0;
};

class ThreeNodes {
 public:
  ThreeNodes() {
    ConfState cs{{1, 2, 3}, {}};
    for (NodeId id = 1; id <= 3; ++id) {
      BenchNode& b = nodes_[id - 1];
      b.storage = std::make_unique<MemoryStorage>();
      (void)b.storage->ApplySnapshot(MemoryStorage::BootstrapSnapshot(cs));
      Config c;
      c.id = id;
      c.storage = b.storage.get();
      c.max_size_per_msg = 1 << 20;
      c.max_inflight_msgs = 256;
      b.node = std::move(*Node::Create(c));
    }
    Message m;
    m.type = MessageType::kTimeoutNow;
    m.from = m.to = 1;
    (void)nodes_[0].node->Step(m);
    RunUntilQuiet();
  }

  Node& leader() { return *nodes_[0].node; }
  uint64_t leader_applied() const { return nodes_[0].applied; }

  // One pass of every host; returns whether anything happened.
  bool Pass() {
    bool any = false;
    for (BenchNode& b : nodes_) {
      while (b.node->HasReady()) {
        any = true;
        Ready rd = b.node->GetReady();
        if (!rd.snapshot.IsEmpty()) (void)b.storage->ApplySnapshot(rd.snapshot);
        (void)b.storage->Append(rd.entries);
        if (rd.hard_state) b.storage->SetHardState(*rd.hard_state);
        for (Message& m : rd.messages) outbox_.push_back(std::move(m));
        if (!rd.committed_entries.empty()) {
          for (const Entry& e : rd.committed_entries) benchmark::DoNotOptimize(e.data.data());
          b.applied = rd.committed_entries.back().index;
        }
        b.node->Advance(rd);
        // Keep the in-memory log short, as a host that snapshots would.
        if (b.applied > b.storage->FirstIndex() + 65536) (void)b.storage->Compact(b.applied);
      }
    }
    inbox_.swap(outbox_);
    outbox_.clear();
    for (Message& m : inbox_) {
      any = true;
      (void)nodes_[m.to - 1].node->Step(std::move(m));
    }
    inbox_.clear();
    return any;
  }

  void RunUntilQuiet() {
    while (Pass()) {
    }
  }

 private:
  BenchNode nodes_[3];
  std::vector<Message> inbox_, outbox_;
};

void BM_ReplicateThreeNodes(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  ThreeNodes cluster;
  const std::string payload = "8bytes!!";
  uint64_t entries = 0;
  uint64_t allocations = 0;
  for (auto _ : state) {
    const uint64_t before = g_allocations;
    for (int i = 0; i < batch; ++i) {
      if (!cluster.leader().Propose(payload).ok()) state.SkipWithError("propose failed");
    }
    const uint64_t target = cluster.leader().last_index();
    while (cluster.leader_applied() < target) cluster.Pass();
    entries += batch;
    allocations += g_allocations - before;
  }
  cluster.RunUntilQuiet();
  state.counters["entries_per_sec"] =
      benchmark::Counter(static_cast<double>(entries), benchmark::Counter::kIsRate);
  state.counters["allocs_per_entry"] =
      static_cast<double>(allocations) / static_cast<double>(entries ? entries : 1);
}
BENCHMARK(BM_ReplicateThreeNodes)->Arg(1)->Arg(64)->Arg(1024)->Arg(8192);

}  // namespace
}  // namespace herald::raft
