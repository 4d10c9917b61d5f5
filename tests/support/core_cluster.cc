#include "tests/support/core_cluster.h"

#include <signal.h>

namespace herald::testing {

using namespace std::chrono_literals;

CoreCluster::CoreCluster(std::string root, int nodes, int partitions)
    : root_(std::move(root)), partitions_(partitions) {
  for (int i = 0; i < nodes; ++i) ports_.push_back(PickFreePort());
  hosts_.assign(nodes, "127.0.0.1");
  prefixes_.resize(nodes);
  Place(hosts_, prefixes_);
  procs_.resize(nodes);
}

void CoreCluster::Place(std::vector<std::string> hosts,
                        std::vector<std::vector<std::string>> prefixes) {
  hosts_ = std::move(hosts);
  prefixes_ = std::move(prefixes);
  peers_.clear();
  for (int i = 0; i < size(); ++i) {
    if (!peers_.empty()) peers_ += ",";
    peers_ += std::to_string(i + 1) + "=" + Address(i);
  }
}

bool CoreCluster::Start(int i, std::string* error) {
  std::vector<std::string> args{"--core.node_id=" + std::to_string(i + 1),
                                "--core.listen=" + Address(i), "--cluster.peers=" + peers_,
                                "--cluster.partitions=" + std::to_string(partitions_),
                                "--raft.tick=50ms", "--admin.listen=127.0.0.1:0",
                                "--data_dir=" + DataDir(i), "--net.loops=1"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  procs_[i] = std::make_unique<Process>("herald-core", std::move(args), prefixes_[i]);
  if (procs_[i]->WaitForLine("herald-core ready").empty()) {
    if (error != nullptr) *error = procs_[i]->log();
    return false;
  }
  return true;
}

void CoreCluster::Kill(int i) {
  procs_[i]->Signal(SIGKILL);
  procs_[i]->Wait(5s);
}

int CoreCluster::StopGracefully(int i) {
  procs_[i]->Signal(SIGTERM);
  return procs_[i]->Wait(10s);
}

void CoreCluster::Signal(int i, int sig) { procs_[i]->Signal(sig); }

std::string CoreCluster::Address(int i) const {
  return hosts_[i] + ":" + std::to_string(ports_[i]);
}

std::string CoreCluster::Servers() const {
  std::string out;
  for (int i = 0; i < size(); ++i) out += (i ? "," : "") + Address(i);
  return out;
}

std::string CoreCluster::DataDir(int i) const { return root_ + "/node" + std::to_string(i + 1); }

}  // namespace herald::testing
