// A cluster of real herald-core processes on loopback for tests: ports picked at construction,
// data under `root`, started, killed, paused and stopped one node at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tests/support/process.h"

namespace herald::testing {

class CoreCluster {
 public:
  CoreCluster(std::string root, int nodes, int partitions);
  // Node i listens on hosts[i] (instead of 127.0.0.1) and is started through prefixes[i] (see
  // Process), e.g. in its own network namespace (NetnsLab). Before the first Start.
  void Place(std::vector<std::string> hosts, std::vector<std::vector<std::string>> prefixes);

  // Appended to every node's command line.
  std::vector<std::string> extra_args;

  // Starts node i (0-based) and waits until it is ready; returns false (with the log in
  // `error`) if it is not.
  bool Start(int i, std::string* error = nullptr);
  void Kill(int i);
  // SIGTERM; returns the exit status (-1 on timeout).
  int StopGracefully(int i);
  void Signal(int i, int sig);

  int size() const { return static_cast<int>(ports_.size()); }
  // "host:port" of node i (127.0.0.1 unless placed elsewhere).
  std::string Address(int i) const;
  // Every node's address, comma-separated.
  std::string Servers() const;
  std::string DataDir(int i) const;
  Process* process(int i) { return procs_[i].get(); }

 private:
  std::string root_;
  int partitions_;
  std::vector<int> ports_;
  std::vector<std::string> hosts_;
  std::vector<std::vector<std::string>> prefixes_;
  std::string peers_;
  std::vector<std::unique_ptr<Process>> procs_;
};

}  // namespace herald::testing
