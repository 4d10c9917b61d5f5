#include "libs/service/service_main.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "libs/admin/process_metrics.h"
#include "libs/common/logging.h"
#include "libs/common/status.h"
#include "libs/common/strings.h"
#include "libs/common/version.h"

namespace herald::service {
namespace {

// Creates the data directory and takes an exclusive lock on <dir>/LOCK, so two processes never
// share one data directory. Returns the lock's descriptor (held until exit).
absl::StatusOr<int> LockDataDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(StrCat("data dir ", dir, ": ", ec.message()));
  std::string lock_path = dir + "/LOCK";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open ", lock_path));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          StrCat("data dir ", dir, " is in use by another process (", lock_path, " is locked)"));
    }
    return ErrnoToStatus(err, StrCat("lock ", lock_path));
  }
  std::string pid = StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) == 0) {
    [[maybe_unused]] ssize_t n = ::write(fd, pid.data(), pid.size());
  }
  return fd;
}

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

const char* SignalName(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal";
}

}  // namespace

int ServiceMain(int argc, char** argv, char** envp, const ServiceSpec& spec) {
  // Writes to closed sockets must fail with EPIPE, not kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  // The distribution's abseil checks every absl::Mutex acquisition (gRPC's locks included) for
  // lock-order cycles, a debugging aid that costs measurable CPU on the publish path.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Every thread inherits this mask; the main thread takes the stop signals with sigwait.
  sigset_t stop_signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  CommonConfig cfg;
  cfg.admin_listen = spec.default_admin_listen;
  cfg.data_dir = spec.default_data_dir;
  ConfigSchema schema;
  if (!spec.default_data_dir.empty()) {
    schema.Add("data_dir", &cfg.data_dir, "Directory for this node's data; created if missing.");
  }
  schema.Add("log.level", &cfg.log_level,
             "Log level: trace, debug, info, warn, error or off. Logs go to stderr.");
  schema.Add("admin.listen", &cfg.admin_listen,
             "Address of the admin HTTP endpoint (/healthz, /readyz, /metrics).");
  schema.Add("admin.max_connections", &cfg.admin_max_connections,
             "Admin endpoint connections open at once; more are closed at accept.");
  schema.Add("net.loops", &cfg.net_loops, "Event loop threads; 0 means one per CPU.");
  schema.Add("shutdown.timeout", &cfg.shutdown_timeout,
             "On SIGINT/SIGTERM, exit with status 1 if the orderly stop takes longer than this. "
             "A second signal exits at once.");
  if (spec.add_options) spec.add_options(schema);

  absl::StatusOr<LoadOutcome> loaded = LoadCommandLine(schema, argc, argv, envp, spec.usage);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s: %s\n", spec.component.c_str(),
                 std::string(loaded.status().message()).c_str());
    return 2;
  }
  if (*loaded == LoadOutcome::kExitOk) return 0;
  if (absl::Status s = InitLogging(cfg.log_level, spec.component); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", spec.component.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  absl::StatusOr<net::SocketAddress> admin_addr = net::SocketAddress::Parse(cfg.admin_listen);
  if (!admin_addr.ok()) {
    spdlog::error("admin.listen: {}", admin_addr.status().message());
    return 2;
  }
  spdlog::info("{} {} ({}) starting", spec.component, kHeraldVersion, kHeraldGitRevision);
  spdlog::debug("configuration:\n{}", schema.Dump());

  int lock_fd = -1;
  if (!cfg.data_dir.empty()) {
    absl::StatusOr<int> lock = LockDataDir(cfg.data_dir);
    if (!lock.ok()) {
      spdlog::error("{}", lock.status().message());
      return 1;
    }
    lock_fd = *lock;
    spdlog::info("data dir {}", cfg.data_dir);
  }

  auto metrics = std::make_shared<admin::MetricsRegistry>();
  admin::RegisterProcessMetrics(*metrics, spec.component);
  net::LoopGroup loops(cfg.net_loops, "loop");
  admin::AdminServer admin_server(metrics);
  std::atomic<bool> ready{false};
  admin_server.AddStandardRoutes([&ready] { return ready.load(); });

  int exit_code = 0;
  bool started_service = false;
  ServiceContext ctx{cfg, loops, *metrics, admin_server};
  absl::Status s = loops.Start();
  if (s.ok()) {
    spdlog::info("{} event loops", loops.size());
    if (spec.start) {
      s = spec.start(ctx);
      // Even a start that failed half way may have started parts (servers posting to the
      // event loops): they are stopped below, while the loops still run.
      started_service = true;
    }
  }
  if (s.ok()) {
    admin::AdminServerOptions ao;
    ao.address = *admin_addr;
    ao.max_connections = cfg.admin_max_connections;
    s = admin_server.Start(loops, ao);
    if (s.ok()) {
      admin::RegisterConnectionMetrics(*metrics, "admin", admin_server.stats());
      spdlog::info("admin listening on {} (/healthz /readyz /metrics)",
                   admin_server.address().ToString());
    } else {
      s = absl::Status(s.code(), StrCat("admin.listen ", cfg.admin_listen, ": ", s.message()));
    }
  }

  if (!s.ok()) {
    spdlog::error("{} failed to start: {}", spec.component, s.message());
    exit_code = 1;
  } else {
    ready.store(true);
    spdlog::info("{} ready", spec.component);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    spdlog::info("received {}, stopping", SignalName(sig));
    ready.store(false);
  }

  // The orderly stop has a deadline, and a second signal ends the process at once.
  std::thread watchdog([stop_signals, timeout = cfg.shutdown_timeout] {
    timespec ts = absl::ToTimespec(timeout);
    int sig;
    do {
      sig = sigtimedwait(&stop_signals, nullptr, &ts);
    } while (sig < 0 && errno == EINTR);
    if (sig > 0) {
      spdlog::warn("second {}: exiting now", SignalName(sig));
      spdlog::default_logger()->flush();
      ::_exit(130);
    }
    if (errno == EAGAIN) {
      spdlog::error("orderly stop took longer than {}; exiting", absl::FormatDuration(timeout));
      spdlog::default_logger()->flush();
      ::_exit(1);
    }
  });
  watchdog.detach();

  admin_server.Stop();
  if (started_service && spec.stop) spec.stop();
  loops.Stop();
  if (lock_fd >= 0) ::close(lock_fd);
  spdlog::info("{} stopped", spec.component);
  spdlog::default_logger()->flush();
  return exit_code;
}

}  // namespace herald::service
