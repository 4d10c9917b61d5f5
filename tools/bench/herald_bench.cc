// herald-bench: load generator for Herald.
//
//   herald-bench publish --servers=127.0.0.1:7070[,host:port...] --partitions=8
//                        --publishers=50 --batch=1 --payload=100 --topics=100 --duration=10s
//
// `publish` runs N publisher threads, each sending Publish requests of `batch` messages (one
// topic per request, topics spread over partitions) to the partition's leader (following
// NOT_LEADER hints), and reports acknowledged messages per second and the latency from sending
// a request to its acknowledgement (p50/p99/p999), with a progress line every second.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/common/partitioning.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<std::string> servers = {"127.0.0.1:7070"};
  uint32_t partitions = 8;
  int publishers = 50;
  int batch = 1;
  int payload = 100;
  int topics = 100;
  absl::Duration duration = absl::Seconds(10);
};

bool ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    std::string k = a.substr(2, eq - 2), v = a.substr(eq + 1);
    bool ok = true;
    if (k == "servers") {
      o->servers = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (k == "partitions") {
      ok = absl::SimpleAtoi(v, &o->partitions) && o->partitions > 0;
    } else if (k == "publishers") {
      ok = absl::SimpleAtoi(v, &o->publishers) && o->publishers > 0;
    } else if (k == "batch") {
      ok = absl::SimpleAtoi(v, &o->batch) && o->batch > 0;
    } else if (k == "payload") {
      ok = absl::SimpleAtoi(v, &o->payload) && o->payload >= 0;
    } else if (k == "topics") {
      ok = absl::SimpleAtoi(v, &o->topics) && o->topics > 0;
    } else if (k == "duration") {
      ok = absl::ParseDuration(v, &o->duration);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "herald-bench: bad flag %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

// Latencies in microseconds, merged from every thread at the end.
struct Recorder {
  std::mutex mu;
  std::vector<uint32_t> latencies_us;
  void Merge(std::vector<uint32_t>& v) {
    std::lock_guard<std::mutex> l(mu);
    latencies_us.insert(latencies_us.end(), v.begin(), v.end());
  }
};

int RunPublish(const Options& o) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const auto& s : o.servers) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channels.push_back(grpc::CreateCustomChannel(s, grpc::InsecureChannelCredentials(), args));
  }
  std::atomic<uint64_t> acked{0}, errors{0};
  std::atomic<bool> stop{false};
  Recorder rec;
  const std::string payload(static_cast<size_t>(o.payload), 'x');
  std::vector<std::thread> threads;
  for (int t = 0; t < o.publishers; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::unique_ptr<herald::v1::Broker::Stub>> stubs;
      for (auto& c : channels) stubs.push_back(herald::v1::Broker::NewStub(c));
      std::map<uint32_t, size_t> leader;  // partition -> server index
      std::map<uint32_t, uint64_t> seq;
      std::mt19937_64 rnd(t * 7919 + 1);
      const uint64_t producer = rnd() | 1;
      std::vector<uint32_t> lat;
      while (!stop.load(std::memory_order_relaxed)) {
        std::string topic = "bench/" + std::to_string(rnd() % o.topics);
        uint32_t p = herald::PartitionFor(topic, o.partitions);
        herald::v1::PublishRequest req;
        for (int i = 0; i < o.batch; ++i) {
          auto* m = req.add_messages();
          m->set_topic(topic);
          m->set_payload(payload);
          m->set_qos(herald::v1::QOS_AT_LEAST_ONCE);
          m->set_producer_id(producer);
          m->set_sequence(++seq[p]);
        }
        auto start = Clock::now();
        // Retry the same request (same sequences) until it is acknowledged.
        while (!stop.load(std::memory_order_relaxed)) {
          size_t server = leader.count(p) ? leader[p] : (p % stubs.size());
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          herald::v1::PublishResponse resp;
          grpc::Status st = stubs[server]->Publish(&ctx, req, &resp);
          bool ok = st.ok();
          if (ok) {
            for (const auto& r : resp.results()) {
              if (r.has_error() && r.error().code() != herald::v1::ERROR_CODE_DUPLICATE) {
                ok = false;
                uint64_t hint = r.error().leader_hint().node_id();
                leader[p] =
                    hint != 0 && hint <= stubs.size() ? hint - 1 : (server + 1) % stubs.size();
                break;
              }
            }
          } else {
            leader[p] = (server + 1) % stubs.size();
          }
          if (ok) {
            auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
            for (int i = 0; i < o.batch; ++i) lat.push_back(static_cast<uint32_t>(us.count()));
            acked.fetch_add(static_cast<uint64_t>(o.batch), std::memory_order_relaxed);
            break;
          }
          errors.fetch_add(1, std::memory_order_relaxed);
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
      rec.Merge(lat);
    });
  }
  auto begin = Clock::now();
  auto end = begin + absl::ToChronoMilliseconds(o.duration);
  uint64_t last = 0;
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    uint64_t now = acked.load();
    std::fprintf(stderr, "  %5.1fs  %8llu msg/s  (%llu acknowledged, %llu retries)\n",
                 std::chrono::duration<double>(Clock::now() - begin).count(),
                 static_cast<unsigned long long>(now - last), static_cast<unsigned long long>(now),
                 static_cast<unsigned long long>(errors.load()));
    last = now;
  }
  stop = true;
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - begin).count();
  auto& l = rec.latencies_us;
  std::sort(l.begin(), l.end());
  auto pct = [&](double q) -> double {
    if (l.empty()) return 0;
    return l[std::min(l.size() - 1, static_cast<size_t>(q * static_cast<double>(l.size())))] /
           1000.0;
  };
  std::printf(
      "publish: publishers=%d batch=%d payload=%dB servers=%zu  ->  %.0f msg/s acknowledged, "
      "latency p50 %.2f ms, p99 %.2f ms, p999 %.2f ms (%llu msgs, %llu retries)\n",
      o.publishers, o.batch, o.payload, o.servers.size(), static_cast<double>(acked.load()) / secs,
      pct(0.5), pct(0.99), pct(0.999), static_cast<unsigned long long>(acked.load()),
      static_cast<unsigned long long>(errors.load()));
  return acked.load() > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (argc < 2 || std::string(argv[1]) != "publish" || !ParseFlags(argc, argv, &o)) {
    std::fprintf(stderr,
                 "usage: herald-bench publish [--servers=host:port,...] [--partitions=8] "
                 "[--publishers=50] [--batch=1] [--payload=100] [--topics=100] "
                 "[--duration=10s]\n");
    return 2;
  }
  return RunPublish(o);
}
