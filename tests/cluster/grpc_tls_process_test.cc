// Mutual TLS on every gRPC link between Herald processes: three herald-core and one herald-edge
// started with grpc.tls.* (a CA and a node certificate made with the openssl command line, SAN
// DNS:localhost and IP:127.0.0.1) elect leaders, carry MQTT messages from mosquitto_pub to
// mosquitto_sub through the edge, answer heraldctl with the TLS flags, and refuse clients that
// present no certificate or one from another CA.
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/process.h"

namespace herald {
namespace {

using namespace std::chrono_literals;
using testing::Process;

constexpr int kNodes = 3;
constexpr int kPartitions = 8;

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

// Runs a shell command line; collects its output.
CommandResult RunCommand(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1 </dev/null").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Join(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += (out.empty() ? "" : " ") + ShellQuote(a);
  return out;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// Makes a CA (<name>-ca.pem) and a certificate it signs (<name>.pem, <name>.key) for
// localhost/127.0.0.1, usable as TLS server and client. Returns openssl's output on failure.
std::string MakeCertificates(const std::string& dir, const std::string& name) {
  const std::string base = dir + "/" + name;
  WriteFile(
      base + "-ca.cnf",
      "[req]\ndistinguished_name=dn\nx509_extensions=v3_ca\nprompt=no\n"
      "[dn]\nCN=" +
          name +
          " test CA\n"
          "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
          "subjectKeyIdentifier=hash\n");
  WriteFile(base + ".cnf", "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=localhost\n");
  WriteFile(base + ".ext",
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "extendedKeyUsage=serverAuth,clientAuth\n");
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
  for (const std::string& cmd : {
           "openssl req -x509 -config " + base + "-ca.cnf " + key + " -keyout " + base +
               "-ca.key -out " + base + "-ca.pem -days 2",
           "openssl req -new -config " + base + ".cnf " + key + " -keyout " + base + ".key -out " +
               base + ".csr",
           "openssl x509 -req -in " + base + ".csr -CA " + base + "-ca.pem -CAkey " + base +
               "-ca.key -set_serial 2 -days 2 -extfile " + base + ".ext -out " + base + ".pem",
       }) {
    CommandResult r = RunCommand(cmd);
    if (r.exit_code != 0) return cmd + ": " + r.out;
  }
  return "";
}

class GrpcTlsProcessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/herald-grpc-tls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    cores_ = new std::vector<std::unique_ptr<Process>>();
    ASSERT_EQ(MakeCertificates(*dir_, "node"), "");
    ASSERT_EQ(MakeCertificates(*dir_, "rogue"), "");

    std::vector<int> ports;
    for (int i = 0; i < kNodes; ++i) ports.push_back(testing::PickFreePort());
    servers_ = new std::string();
    std::string peers;
    for (int i = 0; i < kNodes; ++i) {
      std::string address = "127.0.0.1:" + std::to_string(ports[i]);
      *servers_ += (i ? "," : "") + address;
      peers += (i ? "," : "") + std::to_string(i + 1) + "=" + address;
    }
    for (int i = 0; i < kNodes; ++i) {
      std::vector<std::string> args = {"--core.node_id=" + std::to_string(i + 1),
                                       "--core.listen=127.0.0.1:" + std::to_string(ports[i]),
                                       "--cluster.peers=" + peers,
                                       "--cluster.partitions=" + std::to_string(kPartitions),
                                       "--raft.tick=50ms",
                                       "--admin.listen=127.0.0.1:0",
                                       "--data_dir=" + *dir_ + "/core" + std::to_string(i + 1),
                                       "--net.loops=1",
                                       "--storage.sync=false"};
      for (const auto& a : ServerTlsFlags()) args.push_back(a);
      cores_->push_back(std::make_unique<Process>("herald-core", args));
    }
    for (auto& c : *cores_) ASSERT_FALSE(c->WaitForLine("herald-core ready").empty()) << c->log();

    // Every partition gets a leader over the TLS Raft transport.
    auto deadline = std::chrono::steady_clock::now() + 15s;
    CommandResult status;
    do {
      status = Ctl({"status", "--json", "--timeout=2s"}, CtlTls());
      if (status.exit_code == 0 &&
          status.out.find("\"partitions_without_leader\":0,") != std::string::npos) {
        break;
      }
      std::this_thread::sleep_for(100ms);  // polling an election: nothing to await
    } while (std::chrono::steady_clock::now() < deadline);
    elected_status_ = new std::string(status.out);

    mqtt_port_ = testing::PickFreePort();
    std::vector<std::string> edge_args = {"--edge.core=" + *servers_,
                                          "--edge.partitions=" + std::to_string(kPartitions),
                                          "--mqtt.listen=127.0.0.1:" + std::to_string(mqtt_port_),
                                          "--http.listen=",
                                          "--admin.listen=127.0.0.1:0",
                                          "--net.loops=1"};
    for (const auto& a : ServerTlsFlags()) edge_args.push_back(a);
    edge_ = new Process("herald-edge", edge_args);
    ASSERT_FALSE(edge_->WaitForLine("herald-edge ready", 20s).empty()) << edge_->log();
  }

  static void TearDownTestSuite() {
    delete edge_;  // kills the processes
    edge_ = nullptr;
    delete cores_;
    cores_ = nullptr;
    if (dir_ != nullptr) std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
    delete servers_;
    servers_ = nullptr;
    delete elected_status_;
    elected_status_ = nullptr;
  }

  static std::vector<std::string> ServerTlsFlags() {
    return {"--grpc.tls.cert_file=" + *dir_ + "/node.pem",
            "--grpc.tls.key_file=" + *dir_ + "/node.key",
            "--grpc.tls.ca_file=" + *dir_ + "/node-ca.pem"};
  }
  // heraldctl's TLS flags with the certificate of `name` ("node" or "rogue") and the cluster's
  // CA as the trust root.
  static std::vector<std::string> CtlTls(const std::string& name = "node") {
    return {"--tls-cert=" + *dir_ + "/" + name + ".pem", "--tls-key=" + *dir_ + "/" + name + ".key",
            "--tls-ca=" + *dir_ + "/node-ca.pem"};
  }
  static CommandResult Ctl(std::vector<std::string> args, const std::vector<std::string>& tls) {
    args.insert(args.begin(), "--servers=" + *servers_);
    for (const auto& a : tls) args.push_back(a);
    return RunCommand(ShellQuote(std::string(HERALD_BIN_DIR) + "/heraldctl") + " " + Join(args));
  }

  static std::string* dir_;
  static std::string* servers_;
  static std::string* elected_status_;
  static std::vector<std::unique_ptr<Process>>* cores_;
  static Process* edge_;
  static int mqtt_port_;
};

std::string* GrpcTlsProcessTest::dir_ = nullptr;
std::string* GrpcTlsProcessTest::servers_ = nullptr;
std::string* GrpcTlsProcessTest::elected_status_ = nullptr;
std::vector<std::unique_ptr<Process>>* GrpcTlsProcessTest::cores_ = nullptr;
Process* GrpcTlsProcessTest::edge_ = nullptr;
int GrpcTlsProcessTest::mqtt_port_ = 0;

TEST_F(GrpcTlsProcessTest, CoresElectLeadersAndAnswerHeraldctlOverMutualTls) {
  EXPECT_NE(elected_status_->find("\"partitions_without_leader\":0,"), std::string::npos)
      << *elected_status_;
  for (int id = 1; id <= kNodes; ++id) {
    EXPECT_NE(elected_status_->find("{\"node_id\":" + std::to_string(id) + ",\"address\":"),
              std::string::npos)
        << *elected_status_;
  }
  EXPECT_EQ(elected_status_->find("\"answered\":false"), std::string::npos) << *elected_status_;
  for (auto& c : *cores_) EXPECT_NE(c->log().find("gRPC mutual TLS"), std::string::npos);
}

TEST_F(GrpcTlsProcessTest, EdgeCarriesMqttMessagesOverMutualTls) {
  ASSERT_EQ(std::system("command -v mosquitto_sub mosquitto_pub >/dev/null"), 0)
      << "mosquitto_sub/mosquitto_pub not found: install the Debian package mosquitto-clients";
  const std::string port = std::to_string(mqtt_port_);
  // The subscriber exits after one message (or after 15 s without one); the publisher repeats
  // until it has, since the subscription is not in place at a known moment.
  std::atomic<bool> done{false};
  CommandResult sub;
  std::thread sub_thread([&] {
    sub = RunCommand(Join({"mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t",
                           "tls/live", "-C", "1", "-W", "15", "-F", "MSG %t %p"}));
    done = true;
  });
  int published = 0;
  auto deadline = std::chrono::steady_clock::now() + 15s;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    CommandResult pub = RunCommand(Join({"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1",
                                         "-t", "tls/live", "-m", "over-mtls"}));
    EXPECT_EQ(pub.exit_code, 0) << pub.out;
    ++published;
    for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(30ms);
  }
  sub_thread.join();
  EXPECT_EQ(sub.exit_code, 0) << sub.out << "\n" << edge_->log();
  EXPECT_NE(sub.out.find("MSG tls/live over-mtls"), std::string::npos) << sub.out;

  // The messages were committed on the cores: heraldctl reads them back over TLS.
  CommandResult read =
      Ctl({"subscribe", "--filter=tls/live", "--from=earliest", "--timeout=5s"}, CtlTls());
  EXPECT_EQ(read.exit_code, 0) << read.out;
  EXPECT_NE(read.out.find("over-mtls"), std::string::npos) << read.out;
  EXPECT_GE(published, 1);
}

TEST_F(GrpcTlsProcessTest, ClientWithoutCertificateIsRefused) {
  CommandResult plain = Ctl({"status", "--timeout=2s"}, {});
  EXPECT_EQ(plain.exit_code, 1) << plain.out;
  EXPECT_EQ(plain.out.find("partitions without a known leader"), std::string::npos) << plain.out;
}

TEST_F(GrpcTlsProcessTest, ClientWithCertificateFromAnotherCaIsRefused) {
  CommandResult rogue = Ctl({"status", "--timeout=2s"}, CtlTls("rogue"));
  EXPECT_EQ(rogue.exit_code, 1) << rogue.out;
}

TEST_F(GrpcTlsProcessTest, ServerWithCertificateFromAnotherCaIsRefusedByTheClient) {
  // heraldctl trusts only the rogue CA: the cores' certificates do not verify.
  std::vector<std::string> tls = {"--tls-cert=" + *dir_ + "/rogue.pem",
                                  "--tls-key=" + *dir_ + "/rogue.key",
                                  "--tls-ca=" + *dir_ + "/rogue-ca.pem"};
  CommandResult r = Ctl({"status", "--timeout=2s"}, tls);
  EXPECT_EQ(r.exit_code, 1) << r.out;
}

TEST_F(GrpcTlsProcessTest, PartialTlsConfigurationIsAStartupError) {
  Process core("herald-core",
               {"--core.listen=127.0.0.1:0", "--admin.listen=127.0.0.1:0",
                "--data_dir=" + *dir_ + "/partial", "--grpc.tls.cert_file=" + *dir_ + "/node.pem",
                "--grpc.tls.key_file=" + *dir_ + "/node.key"});
  EXPECT_EQ(core.Wait(10s), 1) << core.log();
  EXPECT_NE(core.log().find("must be set together"), std::string::npos) << core.log();
  EXPECT_NE(core.log().find("missing: grpc.tls.ca_file"), std::string::npos) << core.log();

  Process edge("herald-edge", {"--edge.core=" + *servers_, "--mqtt.listen=127.0.0.1:0",
                               "--http.listen=", "--admin.listen=127.0.0.1:0",
                               "--grpc.tls.ca_file=" + *dir_ + "/node-ca.pem"});
  EXPECT_EQ(edge.Wait(10s), 1) << edge.log();
  EXPECT_NE(edge.log().find("missing: grpc.tls.cert_file, grpc.tls.key_file"), std::string::npos)
      << edge.log();

  CommandResult ctl = Ctl({"status"}, {"--tls-cert=" + *dir_ + "/node.pem"});
  EXPECT_EQ(ctl.exit_code, 2) << ctl.out;
  EXPECT_NE(ctl.out.find("missing: --tls-key, --tls-ca"), std::string::npos) << ctl.out;
}

TEST_F(GrpcTlsProcessTest, AllInOneHeraldServesMqttWithTlsOnItsOwnCoreLink) {
  int port = testing::PickFreePort();
  std::vector<std::string> args = {"--mqtt.listen=127.0.0.1:" + std::to_string(port),
                                   "--core.listen=127.0.0.1:0",
                                   "--http.listen=",
                                   "--admin.listen=127.0.0.1:0",
                                   "--data_dir=" + *dir_ + "/aio",
                                   "--storage.sync=false",
                                   "--net.loops=1"};
  for (const auto& a : ServerTlsFlags()) args.push_back(a);
  Process herald("herald", args);
  ASSERT_FALSE(herald.WaitForLine("herald ready", 20s).empty()) << herald.log();
  // A retained message comes back from the core through the edge's TLS channel.
  const std::string p = std::to_string(port);
  CommandResult pub = RunCommand(Join({"mosquitto_pub", "-h", "127.0.0.1", "-p", p, "-q", "1", "-r",
                                       "-t", "tls/aio", "-m", "retained-over-mtls"}));
  ASSERT_EQ(pub.exit_code, 0) << pub.out << herald.log();
  CommandResult sub = RunCommand(
      Join({"mosquitto_sub", "-h", "127.0.0.1", "-p", p, "-t", "tls/aio", "-C", "1", "-W", "10"}));
  EXPECT_EQ(sub.exit_code, 0) << sub.out << herald.log();
  EXPECT_NE(sub.out.find("retained-over-mtls"), std::string::npos) << sub.out;
  EXPECT_EQ(herald.log().find("not every partition has a serving core node"), std::string::npos)
      << herald.log();
}

}  // namespace
}  // namespace herald
