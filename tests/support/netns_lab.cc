#include "tests/support/netns_lab.h"

#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <set>
#include <sstream>

namespace herald::testing {
namespace {

constexpr const char* kIp = "/usr/sbin/ip";
constexpr const char* kNft = "/usr/sbin/nft";

// Runs a shell command; its exit status, with what it printed in *out.
int Run(const std::string& command, std::string* out = nullptr) {
  FILE* f = ::popen((command + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  std::string text;
  char buf[512];
  size_t n;
  while ((n = ::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  int status = ::pclose(f);
  if (out != nullptr) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Removes what a lab left behind when its process died without cleaning up (killed by a
// timeout, say): its namespaces with the processes still in them, and its bridge.
void RemoveStaleLabs() {
  std::string names;
  if (Run(std::string(kIp) + " netns list", &names) != 0) return;
  std::set<int> dead;
  std::istringstream in(names);
  std::string line;
  while (std::getline(in, line)) {
    int pid = 0, node = 0;
    char rest = 0;
    if (std::sscanf(line.c_str(), "hz%d-%d%c", &pid, &node, &rest) < 2) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // its test is still running
    const std::string ns = line.substr(0, line.find(' '));
    Run(std::string(kIp) + " netns pids " + ns + " | xargs -r kill -9");
    Run(std::string(kIp) + " netns del " + ns);
    dead.insert(pid);
  }
  for (int pid : dead) Run(std::string(kIp) + " link del hz" + std::to_string(pid) + "br");
}

}  // namespace

NetnsLab::NetnsLab(int nodes, std::string tag, int subnet)
    : tag_(std::move(tag)), nodes_(nodes), subnet_(subnet) {}

std::unique_ptr<NetnsLab> NetnsLab::Create(int nodes, std::string* why) {
  if (::geteuid() != 0) {
    *why = "not root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)";
    return nullptr;
  }
  for (const char* tool : {kIp, kNft}) {
    if (::access(tool, X_OK) != 0) {
      *why = std::string(tool) + " is missing (packages iproute2 and nftables)";
      return nullptr;
    }
  }
  RemoveStaleLabs();
  // Interface names are at most 15 characters: "hz" + pid (<= 7 digits) + suffix.
  const int pid = static_cast<int>(::getpid());
  // A 10.213.B.0/24 no route of this machine covers yet.
  int subnet = -1;
  std::string out;
  for (int k = 0; k < 250 && subnet < 0; ++k) {
    const int b = (pid + k) % 250;
    if (Run(std::string(kIp) + " -4 route show 10.213." + std::to_string(b) + ".0/24", &out) == 0 &&
        out.empty()) {
      subnet = b;
    }
  }
  if (subnet < 0) {
    *why = "no free 10.213.B.0/24 subnet";
    return nullptr;
  }
  std::unique_ptr<NetnsLab> lab(new NetnsLab(nodes, "hz" + std::to_string(pid), subnet));
  const std::string net = "10.213." + std::to_string(lab->subnet_) + ".";
  const std::string br = lab->tag_ + "br";
  auto step = [&](const std::string& command) {
    if (Run(command, &out) == 0) return true;
    *why = command + ": " + out;
    return false;
  };
  lab->built_ = true;  // from here on the destructor removes whatever was made
  if (!step(std::string(kIp) + " link add " + br + " type bridge") ||
      !step(std::string(kIp) + " addr add " + net + "254/24 dev " + br) ||
      !step(std::string(kIp) + " link set " + br + " up")) {
    return nullptr;
  }
  for (int i = 0; i < nodes; ++i) {
    const std::string ns = lab->Namespace(i);
    const std::string outer = lab->tag_ + "v" + std::to_string(i);
    const std::string inner = lab->tag_ + "p" + std::to_string(i);
    const std::string in_ns = std::string(kIp) + " -n " + ns;
    if (!step(std::string(kIp) + " netns add " + ns) ||
        !step(std::string(kIp) + " link add " + outer + " type veth peer name " + inner) ||
        !step(std::string(kIp) + " link set " + inner + " netns " + ns) ||
        !step(in_ns + " addr add " + net + std::to_string(i + 1) + "/24 dev " + inner) ||
        !step(in_ns + " link set " + inner + " up") || !step(in_ns + " link set lo up") ||
        !step(std::string(kIp) + " link set " + outer + " master " + br) ||
        !step(std::string(kIp) + " link set " + outer + " up")) {
      return nullptr;
    }
  }
  // Isolate needs nftables in the namespaces: find out now, not halfway through a test.
  if (!step(std::string(kIp) + " netns exec " + lab->Namespace(0) + " " + kNft + " list tables")) {
    return nullptr;
  }
  return lab;
}

NetnsLab::~NetnsLab() {
  if (!built_) return;
  for (int i = 0; i < nodes_; ++i) {
    Run(std::string(kIp) + " link del " + tag_ + "v" + std::to_string(i));
    Run(std::string(kIp) + " netns del " + Namespace(i));
  }
  Run(std::string(kIp) + " link del " + tag_ + "br");
}

std::string NetnsLab::Namespace(int i) const { return tag_ + "-" + std::to_string(i); }

std::string NetnsLab::Host(int i) const {
  return "10.213." + std::to_string(subnet_) + "." + std::to_string(i + 1);
}

std::vector<std::string> NetnsLab::Prefix(int i) const {
  return {kIp, "netns", "exec", Namespace(i)};
}

bool NetnsLab::Isolate(int i, std::string* why, bool from_everyone) {
  std::string others;
  for (int j = 0; j < nodes_; ++j) {
    if (j != i) others += (others.empty() ? "" : ", ") + Host(j);
  }
  const std::string from = from_everyone ? "iifname != \"lo\"" : "ip saddr { " + others + " }";
  const std::string to = from_everyone ? "oifname != \"lo\"" : "ip daddr { " + others + " }";
  std::string rules = "table inet partition {\n";
  rules += "  chain in { type filter hook input priority 0; " + from + " drop; }\n";
  rules += "  chain out { type filter hook output priority 0; " + to + " drop; }\n";
  rules += "}\n";
  const std::string file = "/tmp/" + tag_ + "-partition.nft";
  FILE* f = ::fopen(file.c_str(), "w");
  if (f == nullptr) {
    if (why != nullptr) *why = "cannot write " + file;
    return false;
  }
  ::fputs(rules.c_str(), f);
  ::fclose(f);
  std::string out;
  int rc = Run(std::string(kIp) + " netns exec " + Namespace(i) + " " + kNft + " -f " + file, &out);
  ::unlink(file.c_str());
  if (rc != 0 && why != nullptr) *why = out;
  return rc == 0;
}

bool NetnsLab::Heal(int i, std::string* why) {
  std::string out;
  int rc = Run(std::string(kIp) + " netns exec " + Namespace(i) + " " + kNft +
                   " delete table inet partition",
               &out);
  if (rc != 0 && why != nullptr) *why = out;
  return rc == 0;
}

}  // namespace herald::testing
