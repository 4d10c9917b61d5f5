#include "tests/support/netns_lab.h"

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

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
  // Interface names are at most 15 characters: "hz" + pid (<= 7 digits) + suffix.
  const int pid = static_cast<int>(::getpid());
  std::unique_ptr<NetnsLab> lab(new NetnsLab(nodes, "hz" + std::to_string(pid), pid % 250));
  const std::string net = "10.213." + std::to_string(lab->subnet_) + ".";
  const std::string br = lab->tag_ + "br";
  std::string out;
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
  if (f == nullptr) return false;
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
