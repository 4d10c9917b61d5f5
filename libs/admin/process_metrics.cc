#include "libs/admin/process_metrics.h"

#include <dirent.h>
#include <prometheus/collectable.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "libs/common/version.h"

namespace herald::admin {
namespace {

prometheus::MetricFamily Single(const std::string& name, const std::string& help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

// Reads /proc/self/stat and friends on every Collect().
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));

    std::ifstream stat("/proc/self/stat");
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // Fields after the parenthesised command name (which may contain spaces).
    size_t close = content.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(content.substr(close + 2));
      std::vector<std::string> f;
      std::string tok;
      while (fields >> tok) f.push_back(tok);
      // f[0] is field 3 (state); utime=14, stime=15, starttime=22, vsize=23, rss=24.
      if (f.size() > 21) {
        double utime = std::stod(f[11]), stime = std::stod(f[12]);
        double start_ticks = std::stod(f[19]);
        out.push_back(Single("process_cpu_seconds_total", "User and system CPU time in seconds.",
                             MetricType::Counter, (utime + stime) / ticks));
        out.push_back(Single("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                             MetricType::Gauge, std::stod(f[20])));
        out.push_back(Single("process_resident_memory_bytes", "Resident memory size in bytes.",
                             MetricType::Gauge, std::stod(f[21]) * page));
        out.push_back(Single("process_start_time_seconds",
                             "Start time of the process since the Unix epoch in seconds.",
                             MetricType::Gauge, BootTime() + start_ticks / ticks));
      }
    }
    out.push_back(Single("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
                         CountOpenFds()));
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
      out.push_back(Single("process_max_fds", "Maximum number of open file descriptors.",
                           MetricType::Gauge, static_cast<double>(rl.rlim_cur)));
    }
    return out;
  }

 private:
  static double BootTime() {
    std::ifstream in("/proc/stat");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
    }
    return 0;
  }
  static double CountOpenFds() {
    DIR* d = opendir("/proc/self/fd");
    if (d == nullptr) return 0;
    int n = 0;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
    return n - 1;  // the directory stream's own descriptor
  }
};

class ConnectionCollector : public prometheus::Collectable {
 public:
  ConnectionCollector(std::string name, std::shared_ptr<const net::ConnectionStats> stats)
      : name_(std::move(name)), stats_(std::move(stats)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    auto labelled = [this](prometheus::MetricFamily f) {
      f.metric[0].label.push_back({"listener", name_});
      return f;
    };
    const auto& s = *stats_;
    return {
        labelled(Single("herald_connections_active", "Open connections.", MetricType::Gauge,
                        static_cast<double>(s.active.load()))),
        labelled(Single("herald_connections_accepted_total", "Connections accepted.",
                        MetricType::Counter, static_cast<double>(s.accepted.load()))),
        labelled(Single("herald_connections_rejected_total",
                        "Connections closed at accept (connection limit or refused).",
                        MetricType::Counter, static_cast<double>(s.rejected.load()))),
        labelled(Single("herald_connections_slow_consumer_total",
                        "Connections closed because their write queue reached its limit.",
                        MetricType::Counter, static_cast<double>(s.closed_slow_reader.load()))),
        labelled(Single("herald_connection_received_bytes_total", "Bytes read from peers.",
                        MetricType::Counter, static_cast<double>(s.bytes_in.load()))),
        labelled(Single("herald_connection_sent_bytes_total", "Bytes written to peers.",
                        MetricType::Counter, static_cast<double>(s.bytes_out.load()))),
    };
  }

 private:
  std::string name_;
  std::shared_ptr<const net::ConnectionStats> stats_;
};

}  // namespace

void RegisterProcessMetrics(MetricsRegistry& registry, const std::string& component) {
  registry.AddCollector(std::make_shared<ProcessCollector>());
  prometheus::BuildGauge()
      .Name("herald_build_info")
      .Help("Always 1; labels tell the component, version and source revision.")
      .Register(registry.families())
      .Add(
          {{"component", component}, {"version", kHeraldVersion}, {"revision", kHeraldGitRevision}})
      .Set(1);
}

void RegisterConnectionMetrics(MetricsRegistry& registry, const std::string& name,
                               std::shared_ptr<const net::ConnectionStats> stats) {
  registry.AddCollector(std::make_shared<ConnectionCollector>(name, std::move(stats)));
}

}  // namespace herald::admin
