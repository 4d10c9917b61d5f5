// kill -9 during heavy writes, then reopen: no acknowledged entry is lost and no batch is
// partly visible. A child process writes group-commit batches (several Raft groups per batch,
// entries plus hard state) and reports each batch on a pipe only once it is durable: after
// Engine::Write returned, or, pipelined as the Raft host writes, after an Engine::SyncWal that
// started after its Engine::WriteBuffered returned. The parent kills it at a random moment,
// reopens the database and checks.
//
// What this shows: RocksDB's WAL with sync and point-in-time recovery makes each batch atomic
// and every acknowledged batch durable across a process crash. Power loss (lost page cache) is
// not simulated here.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "libs/common/random.h"
#include "libs/storage/raft_log_store.h"

namespace herald::storage {
namespace {

constexpr uint64_t kGroups = 8;
constexpr int kEntriesPerGroupPerBatch = 4;

std::string Payload(uint64_t group, uint64_t index) {
  return "g" + std::to_string(group) + "i" + std::to_string(index) + std::string(200, 'p');
}

// Child: appends batches forever, acknowledging each on `ack_fd` once it is durable. Pipelined:
// batches are written buffered and a second thread syncs, acknowledging what each fsync covered.
[[noreturn]] void WriterMain(const std::string& path, int ack_fd, bool pipelined) {
  EngineOptions o;
  o.path = path;
  o.sync = true;
  auto engine = Engine::Open(o);
  if (!engine.ok()) ::_exit(3);
  std::vector<std::unique_ptr<RaftLogStore>> stores;
  for (uint64_t g = 1; g <= kGroups; ++g) {
    auto s = RaftLogStore::Load(**engine, g);
    if (!s.ok()) ::_exit(4);
    stores.push_back(std::move(*s));
  }
  uint64_t batch_no = stores[0]->LastIndex() / kEntriesPerGroupPerBatch;
  std::atomic<uint64_t> written{0};
  if (pipelined) {
    std::thread([&] {
      uint64_t synced = 0;
      while (true) {
        const uint64_t target = written.load();
        if (target == synced) {
          std::this_thread::yield();
          continue;
        }
        if (!(*engine)->SyncWal().ok()) ::_exit(8);
        synced = target;
        if (::write(ack_fd, &synced, sizeof(synced)) != sizeof(synced)) ::_exit(7);
      }
    }).detach();
  }
  while (true) {
    ++batch_no;
    rocksdb::WriteBatch b;
    for (auto& s : stores) {
      std::vector<raft::Entry> es;
      for (int k = 0; k < kEntriesPerGroupPerBatch; ++k) {
        raft::Entry e;
        e.index = s->LastIndex() + 1 + k;
        e.term = 1;
        e.data = Payload(s->group(), e.index);
        es.push_back(std::move(e));
      }
      if (!s->Append(es, &b).ok()) ::_exit(5);
      s->SetHardState({1, 1, s->LastIndex()}, &b);
    }
    if (pipelined) {
      if (!(*engine)->WriteBuffered(&b).ok()) ::_exit(6);
      written.store(batch_no);
      continue;
    }
    if (!(*engine)->Write(&b).ok()) ::_exit(6);
    uint64_t ack = batch_no;
    if (::write(ack_fd, &ack, sizeof(ack)) != sizeof(ack)) ::_exit(7);
  }
}

void KillDuringHeavyWrites(bool pipelined) {
  char tmpl[] = "/tmp/herald-crash-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  SeededRandom rnd(static_cast<uint64_t>(::getpid()));
  uint64_t acked = 0;
  for (int round = 0; round < 4; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      WriterMain(dir, fds[1], pipelined);
    }
    ::close(fds[1]);
    // Let it write for a while, then kill it without warning.
    auto kill_at =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(200 + rnd.Uniform(400));
    uint64_t ack = 0;
    while (std::chrono::steady_clock::now() < kill_at) {
      if (::read(fds[0], &ack, sizeof(ack)) == sizeof(ack)) acked = std::max(acked, ack);
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer exited early with status " << WEXITSTATUS(status);
    // Acknowledgements written before the kill are still in the pipe.
    while (::read(fds[0], &ack, sizeof(ack)) == sizeof(ack)) acked = std::max(acked, ack);
    ::close(fds[0]);
    ASSERT_GT(acked, 0u);

    EngineOptions o;
    o.path = dir;
    auto engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    uint64_t last = 0;
    for (uint64_t g = 1; g <= kGroups; ++g) {
      auto s = RaftLogStore::Load(**engine, g);
      ASSERT_TRUE(s.ok()) << s.status();
      // Every group shows the same whole number of batches: none is partly visible.
      if (g == 1) last = (*s)->LastIndex();
      ASSERT_EQ((*s)->LastIndex(), last) << "group " << g << " round " << round;
      ASSERT_EQ(last % kEntriesPerGroupPerBatch, 0u);
      ASSERT_EQ((*s)->hard_state().commit, last) << "hard state and entries are one batch";
      // Every acknowledged batch is there, with the right bytes.
      ASSERT_GE(last, acked * kEntriesPerGroupPerBatch) << "acknowledged entries lost";
      std::vector<raft::Entry> es;
      ASSERT_TRUE((*s)->Entries(1, last + 1, raft::kNoLimit, &es).ok());
      ASSERT_EQ(es.size(), last);
      for (const auto& e : es) ASSERT_EQ(e.data, Payload(g, e.index));
    }
    std::printf("round %d: %llu batches acknowledged, %llu visible after kill -9\n", round,
                static_cast<unsigned long long>(acked),
                static_cast<unsigned long long>(last / kEntriesPerGroupPerBatch));
  }
  std::filesystem::remove_all(dir);
}

TEST(CrashTest, KillDuringHeavyWritesLosesNoAcknowledgedBatchAndShowsNoPartialOne) {
  KillDuringHeavyWrites(/*pipelined=*/false);
}

TEST(CrashTest, KillDuringPipelinedWritesLosesNoSyncedBatchAndShowsNoPartialOne) {
  KillDuringHeavyWrites(/*pipelined=*/true);
}

}  // namespace
}  // namespace herald::storage
