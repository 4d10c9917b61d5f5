// Network namespaces for partition tests: node i runs in a namespace of its own, attached by a
// veth pair to a bridge in this process's namespace, with address 10.213.B.(i+1) (B from this
// process's pid). This process reaches every node through the bridge (10.213.B.254), and a node
// can be cut off from the other nodes by dropping packets silently in its namespace (nftables),
// as a failed switch port or a firewall would: no reset, no ICMP, the peers only stop hearing.
// Needs root, iproute2 and nftables; Create says why when it cannot be done.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace herald::testing {

class NetnsLab {
 public:
  // Builds the bridge and `nodes` namespaces; nullptr with the reason in *why if it cannot.
  static std::unique_ptr<NetnsLab> Create(int nodes, std::string* why);
  ~NetnsLab();  // removes the namespaces, the veths and the bridge
  NetnsLab(const NetnsLab&) = delete;
  NetnsLab& operator=(const NetnsLab&) = delete;

  int size() const { return nodes_; }
  // Node i's address.
  std::string Host(int i) const;
  // Runs a program in node i's namespace (a Process prefix).
  std::vector<std::string> Prefix(int i) const;
  // Drops every packet between node i and the other nodes, both ways; this process still
  // reaches node i unless `from_everyone`. Returns false (with the reason in *why) if nftables
  // refused.
  bool Isolate(int i, std::string* why = nullptr, bool from_everyone = false);
  // Undoes Isolate.
  bool Heal(int i, std::string* why = nullptr);

 private:
  NetnsLab(int nodes, std::string tag, int subnet);
  std::string Namespace(int i) const;
  std::string tag_;
  int nodes_;
  int subnet_;  // third octet
  bool built_ = false;
};

}  // namespace herald::testing
