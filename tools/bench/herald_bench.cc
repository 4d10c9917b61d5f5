// herald-bench: load generator for Herald.
//
//   herald-bench publish --servers=127.0.0.1:7070[,host:port...] --partitions=8
//                        --publishers=50 --batch=1 --payload=100 --topics=100 --duration=10s
//                        --warmup=1s [--client=grpc|stream|edge]
//
// `publish` runs N publishers, each sending Publish requests of `batch` messages (one topic per
// request, topics spread over partitions) to the partition's leader (following NOT_LEADER
// hints), one request outstanding per publisher, and reports acknowledged messages per second
// and the latency from sending a request to its acknowledgement (p50/p99/p999), with a progress
// line every second. Requests acknowledged during the warm-up are not counted. Publishers use
// gRPC's callback API and share its threads, so the load generator takes little of the
// machine it measures.
//
// With --client=stream the same publishers send the same requests over PublishStream instead,
// all publishers sharing one stream per server (each request still waits for its answer before
// the publisher sends the next): what a producer that keeps publishing saves in per-call cost.
//
// With --client=edge the publishers instead share one edge CoreClient (libs/edge), the client
// Herald's edges publish through: each publisher still publishes `batch` messages and waits for
// their acknowledgement, but the client queues messages per partition and keeps one Publish
// request in flight per partition, so what many publishers send meanwhile goes in one request
// (the way an edge carries its MQTT, WebSocket and HTTP publishers' messages to the core).
// Latency is then measured from the publisher's call to its acknowledgement, queueing included.
// There `retries` counts publish calls that failed after the client's own retries, and
// `redirects` stays 0 (the client follows leaders by itself).
//
//   herald-bench mqtt --host 127.0.0.1 --port 1883 --publishers 100 --subscribers 100
//                     --topics 100 --qos 0 --size 100 --rate 0 --duration 10 --version 4
//                     [--idle-connections K] [--broker-pid PID] [--warmup 1]
//
// `mqtt` measures any MQTT 3.1.1/5.0 broker end to end: subscribers subscribe to bench/<i>
// (subscriber j to topic j mod T), then publisher i publishes to bench/<i mod T> at `rate`
// messages/s, or with rate 0 as fast as its window allows: at QoS 1/2, `window` PUBLISHes not
// yet acknowledged by the broker; at QoS 0, `window` messages not yet received by every
// subscriber of the topic (without it a QoS 0 publisher only fills socket buffers). Each payload
// carries the send time and the publisher's sequence number, so the subscribers measure the
// end-to-end latency and count losses and duplicates. With --idle-connections, K connections
// that only CONNECT are opened first, and with --broker-pid the broker's resident memory is read
// before and after them to give the cost of an idle connection. Flags take `--k v` or `--k=v`.
// Prints a progress line every second, a summary, and `RESULT {json}`.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/edge/core_client.h"
#include "libs/edge/publish_lane.h"
#include "libs/protocol/mqtt/codec.h"

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
  absl::Duration warmup = absl::Seconds(1);
  std::string client = "grpc";  // --client=grpc|stream|edge
};

// Reads the flag at argv[*i] as `--key=value` or `--key value`, advancing *i past it.
bool NextFlag(int argc, char** argv, int* i, std::string* k, std::string* v) {
  std::string a = argv[*i];
  if (a.rfind("--", 0) != 0) return false;
  size_t eq = a.find('=');
  if (eq != std::string::npos) {
    *k = a.substr(2, eq - 2);
    *v = a.substr(eq + 1);
  } else {
    if (*i + 1 >= argc) return false;
    *k = a.substr(2);
    *v = argv[++*i];
  }
  ++*i;
  return true;
}

// A duration as a number of seconds ("10", "0.5") or an absl duration ("10s", "500ms").
bool ParseSeconds(const std::string& v, double* seconds) {
  if (absl::SimpleAtod(v, seconds)) return *seconds >= 0;
  absl::Duration d;
  if (!absl::ParseDuration(v, &d) || d < absl::ZeroDuration()) return false;
  *seconds = absl::ToDoubleSeconds(d);
  return true;
}

bool ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 2; i < argc;) {
    std::string a = argv[i], k, v;
    if (!NextFlag(argc, argv, &i, &k, &v)) {
      std::fprintf(stderr, "herald-bench: bad flag %s\n", a.c_str());
      return false;
    }
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
      double secs = 0;
      ok = ParseSeconds(v, &secs);
      o->duration = absl::Seconds(secs);
    } else if (k == "warmup") {
      double secs = 0;
      ok = ParseSeconds(v, &secs);
      o->warmup = absl::Seconds(secs);
    } else if (k == "client") {
      ok = v == "grpc" || v == "stream" || v == "edge";
      o->client = v;
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

// What every publish run shares: counters, the retry timer, progress lines and the summary.
struct PublishRun {
  explicit PublishRun(const Options& options)
      : o(options), measuring(options.warmup <= absl::ZeroDuration()) {}

  const Options& o;
  std::atomic<uint64_t> acked{0}, errors{0}, redirects{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> measuring;

  // Runs `fn` (on the driver thread) after 20 ms: a publisher retrying after an error. Once the
  // run is stopping, the publisher stops instead.
  void RetryLater(std::function<void()> fn) {
    std::lock_guard<std::mutex> l(mu_);
    if (stop.load()) {
      ++stopped_;
    } else {
      retries_.emplace_back(Clock::now() + std::chrono::milliseconds(20), std::move(fn));
    }
    cv_.notify_all();
  }
  // True, with the publisher counted as stopped, once the run is over.
  bool StopHere() {
    if (!stop.load(std::memory_order_relaxed)) return false;
    Stopped();
    return true;
  }
  // A random topic of the run's.
  std::string Topic(std::mt19937_64& rnd) const {
    return "bench/" + std::to_string(rnd() % o.topics);
  }
  // A publisher stopped for good (the run is over).
  void Stopped() {
    std::lock_guard<std::mutex> l(mu_);
    ++stopped_;
    cv_.notify_all();
  }

  // Drives the run once every publisher has started: warm-up, measurement with a progress line
  // every second, then waits for all `publishers` to stop. Returns the measured seconds.
  double Drive() {
    if (o.warmup > absl::ZeroDuration()) {
      ServeRetries(Clock::now() + absl::ToChronoMilliseconds(o.warmup));
      measuring = true;
    }
    auto begin = Clock::now();
    auto end = begin + absl::ToChronoMilliseconds(o.duration);
    uint64_t last = 0;
    while (Clock::now() < end) {
      ServeRetries(std::min(end, Clock::now() + std::chrono::seconds(1)));
      uint64_t now = acked.load();
      std::fprintf(stderr,
                   "  %5.1fs  %8llu msg/s  slowest %7.2f ms  (%llu acknowledged, %llu retries, "
                   "%llu redirects)\n",
                   std::chrono::duration<double>(Clock::now() - begin).count(),
                   static_cast<unsigned long long>(now - last),
                   static_cast<double>(interval_max_us.exchange(0)) / 1000.0,
                   static_cast<unsigned long long>(now),
                   static_cast<unsigned long long>(errors.load()),
                   static_cast<unsigned long long>(redirects.load()));
      last = now;
    }
    // Acknowledgements after this point are not counted.
    measuring = false;
    double secs = std::chrono::duration<double>(Clock::now() - begin).count();
    stop = true;
    // Publishers with a request in flight stop when it completes; those waiting to retry stop
    // here.
    std::unique_lock<std::mutex> l(mu_);
    stopped_ += static_cast<int>(retries_.size());
    retries_.clear();
    cv_.wait(l, [&] { return stopped_ == o.publishers; });
    return secs;
  }

  int Summary(double secs, std::vector<uint32_t> l) const {
    std::sort(l.begin(), l.end());
    auto pct = [&](double q) -> double {
      if (l.empty()) return 0;
      return l[std::min(l.size() - 1, static_cast<size_t>(q * static_cast<double>(l.size())))] /
             1000.0;
    };
    std::printf(
        "publish: client=%s publishers=%d batch=%d payload=%dB servers=%zu  ->  %.0f msg/s "
        "acknowledged, latency p50 %.2f ms, p99 %.2f ms, p999 %.2f ms (%llu msgs, %llu retries, "
        "%llu redirects)\n",
        o.client.c_str(), o.publishers, o.batch, o.payload, o.servers.size(),
        static_cast<double>(acked.load()) / secs, pct(0.5), pct(0.99), pct(0.999),
        static_cast<unsigned long long>(acked.load()),
        static_cast<unsigned long long>(errors.load()),
        static_cast<unsigned long long>(redirects.load()));
    return acked.load() > 0 ? 0 : 1;
  }

  // Counts an acknowledged batch started at `start` (when measuring).
  void Acked(Clock::time_point start, std::vector<uint32_t>* lat) {
    if (!measuring.load(std::memory_order_relaxed)) return;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    for (int i = 0; i < o.batch; ++i) lat->push_back(static_cast<uint32_t>(us.count()));
    acked.fetch_add(static_cast<uint64_t>(o.batch), std::memory_order_relaxed);
    // The slowest acknowledgement of the current progress interval, so that a stall shows in
    // the line of the second it happened in.
    const auto v = static_cast<uint64_t>(us.count());
    uint64_t seen = interval_max_us.load(std::memory_order_relaxed);
    while (v > seen && !interval_max_us.compare_exchange_weak(seen, v)) {
    }
  }

  std::atomic<uint64_t> interval_max_us{0};

 private:
  // Runs the retries that are due; returns once `until` has passed.
  void ServeRetries(Clock::time_point until) {
    while (Clock::now() < until) {
      std::vector<std::function<void()>> due;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait_for(l, std::chrono::milliseconds(5));
        auto now = Clock::now();
        for (size_t i = 0; i < retries_.size();) {
          if (retries_[i].first <= now) {
            due.push_back(std::move(retries_[i].second));
            retries_[i] = std::move(retries_.back());
            retries_.pop_back();
          } else {
            ++i;
          }
        }
      }
      for (auto& fn : due) fn();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Clock::time_point, std::function<void()>>> retries_;
  int stopped_ = 0;
};

// Producer ids are fresh on every run: the core remembers (producer, sequence) pairs, and a run
// reusing an earlier run's ids would see its first sequences acknowledged as duplicates without
// being written.
uint64_t RunSeed() {
  std::random_device entropy;
  return (static_cast<uint64_t>(entropy()) << 32) ^ entropy() ^
         static_cast<uint64_t>(Clock::now().time_since_epoch().count());
}

// What every kind of publisher has: its run, the payload, its random topics and the latencies
// it measured.
struct PublisherBase {
  PublishRun* run = nullptr;
  const std::string* payload = nullptr;
  std::mt19937_64 rnd;
  Clock::time_point start;
  std::vector<uint32_t> lat;
};

// One logical publisher: one Publish request outstanding at a time, sent with gRPC's callback
// API, so that fifty publishers cost the machine little more than one (no thread each).
struct StreamPool;

struct Publisher : PublisherBase, herald::edge::PublishLane::Waiter {
  std::vector<std::unique_ptr<herald::v1::Broker::Stub>>* stubs = nullptr;
  std::vector<std::unique_ptr<StreamPool>>* streams = nullptr;  // --client=stream
  uint64_t id = 0;                                              // request id on the streams

  std::map<uint32_t, size_t> leader;  // partition -> server index
  std::map<uint32_t, uint64_t> seq;
  uint64_t producer = 0;
  uint32_t partition = 0;
  size_t server = 0;
  herald::v1::PublishRequest req;
  herald::v1::PublishResponse resp;
  std::unique_ptr<grpc::ClientContext> ctx;

  void Next() {
    if (run->StopHere()) return;
    const Options& o = run->o;
    std::string topic = run->Topic(rnd);
    partition = herald::PartitionFor(topic, o.partitions);
    req.Clear();
    for (int i = 0; i < o.batch; ++i) {
      auto* m = req.add_messages();
      m->set_topic(topic);
      m->set_payload(*payload);
      m->set_qos(herald::v1::QOS_AT_LEAST_ONCE);
      m->set_producer_id(producer);
      m->set_sequence(++seq[partition]);
    }
    start = Clock::now();
    Send();
  }

  // Sends (or resends: same sequences) the current request until it is acknowledged.
  void Send() {
    if (run->StopHere()) return;
    server = leader.count(partition) ? leader[partition] : (partition % stubs->size());
    resp.Clear();
    if (streams != nullptr) {
      SendOnStream();
      return;
    }
    ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    (*stubs)[server]->async()->Publish(ctx.get(), &req, &resp,
                                       [this](grpc::Status st) { Done(st); });
  }
  void SendOnStream();  // below StreamPool
  void Answered(const grpc::Status& status, herald::v1::PublishResponse* response) override {
    if (response != nullptr) resp.Swap(response);
    Done(status);
  }

  void Done(const grpc::Status& st) {
    bool ok = st.ok();
    bool redirected = false;
    if (ok) {
      for (const auto& r : resp.results()) {
        if (r.has_error() && r.error().code() != herald::v1::ERROR_CODE_DUPLICATE) {
          ok = false;
          uint64_t hint = r.error().leader_hint().node_id();
          redirected = hint != 0 && hint <= stubs->size() && hint - 1 != server;
          leader[partition] = redirected ? hint - 1 : (server + 1) % stubs->size();
          break;
        }
      }
    } else {
      leader[partition] = (server + 1) % stubs->size();
    }
    if (ok) {
      run->Acked(start, &lat);
      Next();
      return;
    }
    if (run->stop.load(std::memory_order_relaxed)) {
      run->Stopped();  // the run is over: no retry (nobody would serve it)
      return;
    }
    // Sent to a follower that named the leader: go there at once. Anything else (no leader
    // yet, overload, a node down) is retried after a pause.
    if (redirected) {
      run->redirects.fetch_add(1, std::memory_order_relaxed);
      Send();
      return;
    }
    run->errors.fetch_add(1, std::memory_order_relaxed);
    run->RetryLater([this] { Send(); });
  }
};

// --client=stream: the PublishStream to one server, shared by every publisher. A stream lives
// until it breaks (then its unanswered requests fail, as a failed Publish call would, and the
// next request opens a new one) or the run ends.
struct StreamPool {
  explicit StreamPool(herald::v1::Broker::Stub* s) : stub(s) {}

  void Send(Publisher* p);
  // Fails the requests of the current stream unanswered for 5 s (as a Publish call's deadline
  // would): their publishers retry.
  void Expire() {
    std::shared_ptr<herald::edge::PublishLane> lane;
    {
      std::lock_guard<std::mutex> l(mu);
      lane = current;
    }
    if (lane != nullptr) {
      lane->Expire(herald::edge::PublishLane::Clock::now() - std::chrono::seconds(5));
    }
  }
  // Ends the current stream and waits until none is left.
  void Close() {
    std::shared_ptr<herald::edge::PublishLane> lane;
    {
      std::lock_guard<std::mutex> l(mu);
      lane = current;
    }
    if (lane != nullptr) lane->Cancel();  // not under mu: the stream's end takes it
    lane.reset();
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return lanes == 0; });
  }

  herald::v1::Broker::Stub* const stub;
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<herald::edge::PublishLane> current;
  int lanes = 0;
};

void StreamPool::Send(Publisher* p) {
  std::shared_ptr<herald::edge::PublishLane> lane;
  bool fresh = false;
  {
    std::lock_guard<std::mutex> l(mu);
    if (current == nullptr) {
      current = std::make_shared<herald::edge::PublishLane>(
          stub,
          [this](herald::edge::PublishLane* ended, const grpc::Status&) {
            std::lock_guard<std::mutex> l(mu);
            if (current.get() == ended) current.reset();
          },
          [this] {
            std::lock_guard<std::mutex> l(mu);
            --lanes;
            cv.notify_all();
          });
      ++lanes;
      fresh = true;
    }
    lane = current;
  }
  if (fresh) lane->Start(lane);
  herald::v1::PublishRequest copy = p->req;  // the publisher keeps its own to resend
  lane->Send(p->id, &copy, p);
}

void Publisher::SendOnStream() { (*streams)[server]->Send(this); }

// A publisher of --client=edge: publishes through the shared edge CoreClient, which assigns
// producer ids and sequences, follows leaders and retries by itself.
struct EdgePublisher : PublisherBase {
  herald::edge::CoreClient* client = nullptr;

  void Next() {
    if (run->StopHere()) return;
    const Options& o = run->o;
    std::string topic = run->Topic(rnd);
    std::vector<herald::v1::Message> messages(static_cast<size_t>(o.batch));
    for (auto& m : messages) {
      m.set_topic(topic);
      m.set_payload(*payload);
      m.set_qos(herald::v1::QOS_AT_LEAST_ONCE);
    }
    start = Clock::now();
    client->Publish(std::move(messages), [this](const absl::Status& s) { Done(s); });
  }

  void Done(const absl::Status& s) {
    if (s.ok()) {
      run->Acked(start, &lat);
      Next();
      return;
    }
    if (run->stop.load(std::memory_order_relaxed)) {
      run->Stopped();
      return;
    }
    // The client already retried until its publish timeout (or refused at once: a full
    // queue); publish the next batch after a pause, never from inside this callback.
    run->errors.fetch_add(1, std::memory_order_relaxed);
    run->RetryLater([this] { Next(); });
  }
};

// Creates the run's publishers (`setup` completes each one), starts them, drives the run and
// prints the summary; `stopped` runs once every publisher has stopped.
template <typename P, typename Setup>
int RunPublishers(const Options& o, Setup setup, const std::function<void()>& stopped = {}) {
  PublishRun run(o);
  const uint64_t seed = RunSeed();
  const std::string payload(static_cast<size_t>(o.payload), 'x');
  std::vector<std::unique_ptr<P>> pubs;
  for (int t = 0; t < o.publishers; ++t) {
    auto p = std::make_unique<P>();
    p->run = &run;
    p->payload = &payload;
    p->rnd.seed(seed + static_cast<uint64_t>(t) * 7919);
    setup(p.get());
    pubs.push_back(std::move(p));
  }
  for (auto& p : pubs) p->Next();
  double secs = run.Drive();
  if (stopped) stopped();
  std::vector<uint32_t> l;
  for (auto& p : pubs) l.insert(l.end(), p->lat.begin(), p->lat.end());
  return run.Summary(secs, std::move(l));
}

int RunPublishEdge(const Options& o) {
  herald::edge::CoreClientOptions co;
  co.addresses = o.servers;
  co.partitions = o.partitions;
  co.edge_id = "herald-bench";
  herald::edge::CoreClient client(co, [](const std::vector<herald::v1::Message*>&) {});
  if (absl::Status s = client.Start(); !s.ok()) {
    std::fprintf(stderr, "herald-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return RunPublishers<EdgePublisher>(
      o, [&](EdgePublisher* p) { p->client = &client; }, [&] { client.Shutdown(); });
}

int RunPublish(const Options& o) {
  if (o.client == "edge") return RunPublishEdge(o);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const auto& s : o.servers) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channels.push_back(grpc::CreateCustomChannel(s, grpc::InsecureChannelCredentials(), args));
  }
  std::vector<std::unique_ptr<herald::v1::Broker::Stub>> stubs;
  for (auto& c : channels) stubs.push_back(herald::v1::Broker::NewStub(c));
  std::vector<std::unique_ptr<StreamPool>> streams;
  for (auto& stub : stubs) streams.push_back(std::make_unique<StreamPool>(stub.get()));
  uint64_t next_id = 0;
  std::atomic<bool> expiring{o.client == "stream"};
  std::thread expiry([&] {
    while (expiring.load()) {
      for (auto& pool : streams) pool->Expire();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  return RunPublishers<Publisher>(
      o,
      [&](Publisher* p) {
        p->stubs = &stubs;
        if (o.client == "stream") p->streams = &streams;
        p->id = ++next_id;
        p->producer = p->rnd() | 1;
      },
      [&] {
        expiring = false;
        expiry.join();
        for (auto& pool : streams) pool->Close();
      });
}

// ---------------------------------------------------------------------------------------------
// mqtt: an MQTT client load generator on epoll, built on the repository's codec.

namespace mqtt = herald::mqtt;

struct MqttOptions {
  std::string host = "127.0.0.1";
  int port = 1883;
  int publishers = 1;
  int subscribers = 1;
  int topics = 1;
  int qos = 0;
  int size = 100;
  double rate = 0;  // messages/s per publisher; 0 = as fast as flow control allows
  double duration_s = 10;
  double warmup_s = 1;
  int version = 4;
  int idle = 0;
  int broker_pid = 0;
  int threads = 2;
  int window = 64;          // QoS 1/2 PUBLISHes in flight per publisher
  int connect_rate = 1000;  // new connections per second, all threads together
};

bool ParseMqttFlags(int argc, char** argv, MqttOptions* o) {
  for (int i = 2; i < argc;) {
    std::string a = argv[i], k, v;
    if (!NextFlag(argc, argv, &i, &k, &v)) {
      std::fprintf(stderr, "herald-bench: bad flag %s\n", a.c_str());
      return false;
    }
    bool ok = true;
    if (k == "host") {
      o->host = v;
    } else if (k == "port") {
      ok = absl::SimpleAtoi(v, &o->port) && o->port > 0 && o->port < 65536;
    } else if (k == "publishers") {
      ok = absl::SimpleAtoi(v, &o->publishers) && o->publishers >= 0;
    } else if (k == "subscribers") {
      ok = absl::SimpleAtoi(v, &o->subscribers) && o->subscribers >= 0;
    } else if (k == "topics") {
      ok = absl::SimpleAtoi(v, &o->topics) && o->topics > 0;
    } else if (k == "qos") {
      ok = absl::SimpleAtoi(v, &o->qos) && o->qos >= 0 && o->qos <= 2;
    } else if (k == "size") {
      ok = absl::SimpleAtoi(v, &o->size) && o->size >= 0 && o->size <= (1 << 20);
    } else if (k == "rate") {
      ok = absl::SimpleAtod(v, &o->rate) && o->rate >= 0;
    } else if (k == "duration") {
      ok = ParseSeconds(v, &o->duration_s) && o->duration_s > 0;
    } else if (k == "warmup") {
      ok = ParseSeconds(v, &o->warmup_s);
    } else if (k == "version") {
      ok = absl::SimpleAtoi(v, &o->version) && (o->version == 4 || o->version == 5);
    } else if (k == "idle-connections") {
      ok = absl::SimpleAtoi(v, &o->idle) && o->idle >= 0;
    } else if (k == "broker-pid") {
      ok = absl::SimpleAtoi(v, &o->broker_pid) && o->broker_pid > 0;
    } else if (k == "threads") {
      ok = absl::SimpleAtoi(v, &o->threads) && o->threads > 0 && o->threads <= 64;
    } else if (k == "window") {
      ok = absl::SimpleAtoi(v, &o->window) && o->window > 0 && o->window <= 65535;
    } else if (k == "connect-rate") {
      ok = absl::SimpleAtoi(v, &o->connect_rate) && o->connect_rate > 0;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "herald-bench: bad flag --%s %s\n", k.c_str(), v.c_str());
      return false;
    }
  }
  return true;
}

// Resident memory of `pid` in bytes (VmRSS of /proc/PID/status); 0 when unreadable.
uint64_t ResidentBytes(int pid) {
  std::ifstream f(herald::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      uint64_t kb = 0;
      // "VmRSS:    1234 kB"
      return absl::SimpleAtoi(line.substr(6, line.size() - 6 - 3), &kb) ? kb * 1024 : 0;
    }
  }
  return 0;
}

// Payload header, native byte order: send time (steady clock, ns), publisher index, flags,
// publisher sequence number (from 1). The rest of the payload is padding.
constexpr size_t kPayloadHeader = 24;
constexpr uint32_t kMeasured = 1;  // sent inside the measurement window (not during warm-up)

// End-to-end latency histogram: 10 µs buckets up to 10 s (later ones land in the last bucket).
constexpr size_t kLatencyBuckets = 1'000'001;
constexpr int64_t kBucketNs = 10'000;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

enum class ConnRole : uint8_t { kIdle, kSubscriber, kPublisher };
enum class ConnState : uint8_t { kWaiting, kConnecting, kConnacking, kSubscribing, kReady, kDone };

// One client connection; owned and used by one MqttLoop thread.
struct MqttConn {
  ConnRole role = ConnRole::kIdle;
  int index = 0;  // within its role
  int topic = 0;
  int fd = -1;
  ConnState state = ConnState::kWaiting;
  int attempts = 0;
  Clock::time_point retry_at{};
  std::optional<mqtt::Decoder> decoder;
  std::string out;
  size_t out_off = 0;
  uint16_t keep_alive_s = 0;
  Clock::time_point last_send{};
  // Publisher: the PUBLISH packet encoded once, patched for each message.
  std::string tmpl;
  size_t pid_off = 0, payload_off = 0;
  uint64_t seq = 0;
  uint16_t next_pid = 1;
  int inflight = 0;
  int window = 0;
  // QoS 0 end-to-end window: copies written off as lost, and when the window last moved.
  uint64_t written_off = 0, last_copies = 0;
  Clock::time_point window_moved{};
  std::vector<uint8_t> pid_in_use;
  // Subscriber: the highest sequence received from each publisher.
  std::unordered_map<uint32_t, uint64_t> last_seq;

  size_t pending() const { return out.size() - out_off; }
};

// What the main thread and the loops share. The loops own the connections; the main thread
// only moves `phase` forward and reads the counters.
struct MqttShared {
  explicit MqttShared(const MqttOptions& opts)
      : o(opts),
        subs_per_topic(static_cast<size_t>(opts.topics), 0),
        sent_by_topic(static_cast<size_t>(opts.topics)),
        copies_by_publisher(static_cast<size_t>(opts.publishers)) {
    for (int i = 0; i < opts.subscribers; ++i)
      ++subs_per_topic[static_cast<size_t>(i % opts.topics)];
  }
  const MqttOptions& o;
  sockaddr_in addr{};
  mqtt::Version version = mqtt::Version::kV311;
  // 0 open idle connections, 1 open subscribers, 2 open publishers, 3 publish, 4 stop
  // publishing (drain), 5 exit.
  std::atomic<int> phase{0};
  std::atomic<bool> measuring{false};
  std::atomic<int> ready[3] = {0, 0, 0};  // by ConnRole
  std::atomic<int> failed[3] = {0, 0, 0};
  std::atomic<int> lost_after_ready{0};
  std::atomic<int> errors_printed{0};
  std::vector<uint64_t> subs_per_topic;
  std::vector<std::atomic<uint64_t>> sent_by_topic;  // measured messages
  // Copies of each publisher's messages received by the subscribers: the end-to-end window of
  // QoS 0 publishers at rate 0.
  std::vector<std::atomic<uint64_t>> copies_by_publisher;
};

// Counters of one loop (written by its thread only, read by the main thread).
struct alignas(64) MqttCounters {
  std::atomic<uint64_t> sent{0}, received{0};  // all, for the progress line
  std::atomic<uint64_t> sent_measured{0}, received_measured{0}, duplicates{0};
  std::atomic<int64_t> inflight{0};
};

class MqttLoop {
 public:
  explicit MqttLoop(MqttShared* shared) : s_(shared), o_(shared->o) {}
  ~MqttLoop() {
    for (auto& c : conns_)
      if (c->fd >= 0) ::close(c->fd);
    if (ep_ >= 0) ::close(ep_);
  }

  // Adds a connection to open in phase `role` (before Start).
  void Add(ConnRole role, int index) {
    auto c = std::make_unique<MqttConn>();
    c->role = role;
    c->index = index;
    if (role == ConnRole::kSubscriber) c->topic = index % o_.topics;
    if (role == ConnRole::kPublisher) {
      c->topic = index % o_.topics;
      BuildTemplate(*c);
      pubs_.push_back(c.get());
    }
    by_role_[static_cast<int>(role)].push_back(c.get());
    conns_.push_back(std::move(c));
  }

  void Start() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    thread_ = std::thread([this] { Run(); });
  }
  void Join() { thread_.join(); }

  MqttCounters counters;
  std::vector<uint64_t> histogram;  // valid after Join

 private:
  void BuildTemplate(MqttConn& c) {
    mqtt::Publish p;
    p.qos = static_cast<mqtt::QoS>(o_.qos);
    p.topic = herald::StrCat("bench/", c.topic);
    p.packet_id = o_.qos > 0 ? 1 : 0;
    p.payload.assign(std::max<size_t>(static_cast<size_t>(o_.size), kPayloadHeader), 'x');
    absl::Status st = mqtt::Encode(p, s_->version, &c.tmpl);
    if (!st.ok()) {
      std::fprintf(stderr, "herald-bench: cannot encode PUBLISH: %s\n", st.ToString().c_str());
      std::exit(2);
    }
    size_t header = 1;
    while (static_cast<uint8_t>(c.tmpl[header]) & 0x80) ++header;
    ++header;  // fixed header: type byte + Remaining Length bytes
    c.pid_off = header + 2 + p.topic.size();
    c.payload_off = c.tmpl.size() - p.payload.size();
    if (o_.qos > 0) c.pid_in_use.assign(65536, 0);
    c.window = o_.window;
  }

  void Run() {
    histogram.assign(kLatencyBuckets, 0);
    std::vector<epoll_event> events(1024);
    auto last_sweep = Clock::now();
    auto last_tick = Clock::now();
    double tokens = 1;
    const double rate = static_cast<double>(o_.connect_rate) / o_.threads;
    int enqueued_phase = -1;
    bool hungry = false;
    for (;;) {
      int ph = s_->phase.load(std::memory_order_acquire);
      if (ph >= 5) break;
      while (enqueued_phase < std::min(ph, 2)) {
        ++enqueued_phase;
        for (MqttConn* c : by_role_[enqueued_phase]) to_open_.push_back(c);
      }
      if (ph >= 3 && publish_start_ == Clock::time_point{}) publish_start_ = Clock::now();
      auto now = Clock::now();
      tokens = std::min(tokens + std::chrono::duration<double>(now - last_tick).count() * rate,
                        std::max(1.0, rate / 20));
      last_tick = now;
      while (open_next_ < to_open_.size() && tokens >= 1) {
        tokens -= 1;
        Open(*to_open_[open_next_++]);
      }
      int timeout = hungry                                                         ? 0
                    : (open_next_ < to_open_.size() || !retry_.empty() || ph == 3) ? 1
                                                                                   : 20;
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), timeout);
      for (int i = 0; i < n; ++i) {
        OnEvent(*static_cast<MqttConn*>(events[static_cast<size_t>(i)].data.ptr),
                events[static_cast<size_t>(i)].events);
      }
      now = Clock::now();
      hungry = false;
      if (ph == 3) {
        bool measured = s_->measuring.load(std::memory_order_relaxed);
        for (MqttConn* c : pubs_) hungry |= Pump(*c, now, measured);
      }
      if (now - last_sweep > std::chrono::milliseconds(100)) {
        last_sweep = now;
        Sweep(now);
      }
    }
  }

  // Retries connections whose attempt failed, and sends PINGREQs when the server asked for a
  // keep-alive.
  void Sweep(Clock::time_point now) {
    std::vector<MqttConn*> later;
    for (MqttConn* c : retry_) {
      if (c->retry_at <= now) {
        Open(*c);
      } else {
        later.push_back(c);
      }
    }
    retry_.swap(later);
    for (auto& c : conns_) {
      if (c->state == ConnState::kReady && c->keep_alive_s > 0 &&
          now - c->last_send > std::chrono::milliseconds(c->keep_alive_s * 500)) {
        Send(*c, mqtt::Pingreq{});
        Flush(*c);
      }
    }
  }

  void Error(const MqttConn& c, const std::string& what) {
    if (s_->errors_printed.fetch_add(1) < 10) {
      static const char* kRoles[] = {"idle", "subscriber", "publisher"};
      std::fprintf(stderr, "herald-bench: %s %d: %s\n", kRoles[static_cast<int>(c.role)], c.index,
                   what.c_str());
    }
  }

  void Open(MqttConn& c) {
    ++c.attempts;
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      Error(c, herald::StrCat("socket: ", std::strerror(errno)));
      Fail(c);
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&s_->addr), sizeof(s_->addr)) != 0 &&
        errno != EINPROGRESS) {
      Retry(c, herald::StrCat("connect: ", std::strerror(errno)));
      return;
    }
    c.state = ConnState::kConnecting;
    c.decoder.emplace(mqtt::DecoderOptions{.role = mqtt::Role::kClient, .version = s_->version});
    c.out.clear();
    c.out_off = 0;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &c;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
  }

  void CloseFd(MqttConn& c) {
    if (c.fd >= 0) ::close(c.fd);  // also leaves the epoll set
    c.fd = -1;
  }

  void Fail(MqttConn& c) {
    CloseFd(c);
    c.state = ConnState::kDone;
    s_->failed[static_cast<int>(c.role)].fetch_add(1);
  }

  // A connection that ends before it is ready is tried again (the broker may be refusing
  // connections under load); one that was ready is counted as lost.
  void Retry(MqttConn& c, const std::string& why) {
    CloseFd(c);
    if (c.state == ConnState::kReady) {
      Error(c, herald::StrCat("connection lost: ", why));
      c.state = ConnState::kDone;
      s_->lost_after_ready.fetch_add(1);
      if (c.role == ConnRole::kPublisher) counters.inflight.fetch_sub(c.inflight);
      return;
    }
    if (c.attempts >= 10) {
      Error(c, herald::StrCat("giving up after ", c.attempts, " attempts: ", why));
      Fail(c);
      return;
    }
    c.state = ConnState::kWaiting;
    c.retry_at = Clock::now() + std::chrono::milliseconds(std::min(1000, 200 * c.attempts));
    retry_.push_back(&c);
  }

  template <typename P>
  void Send(MqttConn& c, const P& packet) {
    absl::Status st = mqtt::Encode(mqtt::Packet(packet), s_->version, &c.out);
    if (!st.ok()) Error(c, herald::StrCat("encode: ", st.ToString()));
  }

  // Writes what the socket takes; false when the connection failed.
  bool Flush(MqttConn& c) {
    if (c.fd < 0) return false;
    while (c.pending() > 0) {
      ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL);
      if (n > 0) {
        c.out_off += static_cast<size_t>(n);
        c.last_send = Clock::now();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      Retry(c, herald::StrCat("send: ", std::strerror(errno)));
      return false;
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    } else if (c.out_off > (64u << 10) && c.out_off > c.out.size() / 2) {
      c.out.erase(0, c.out_off);
      c.out_off = 0;
    }
    return true;
  }

  void OnEvent(MqttConn& c, uint32_t events) {
    if (c.fd < 0) return;
    if (c.state == ConnState::kConnecting) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
        Retry(c, herald::StrCat("connect: ", std::strerror(err != 0 ? err : ECONNRESET)));
        return;
      }
      if (!(events & EPOLLOUT)) return;
      c.state = ConnState::kConnacking;
      mqtt::Connect connect;
      connect.clean_start = true;
      connect.keep_alive = 0;
      connect.client_id =
          herald::StrCat("hb", getpid(), "-", static_cast<int>(c.role), "-", c.index);
      Send(c, connect);
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      if (!Read(c)) return;
    }
    Flush(c);
  }

  // Reads until EAGAIN (edge-triggered) and handles the packets; false when the connection
  // ended.
  bool Read(MqttConn& c) {
    static thread_local char buf[256 << 10];
    for (;;) {
      ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        packets_.clear();
        std::optional<mqtt::Error> err =
            c.decoder->Feed(std::string_view(buf, static_cast<size_t>(n)), &packets_);
        for (mqtt::Packet& p : packets_) {
          if (!Handle(c, p)) return false;
        }
        if (err) {
          Retry(c, herald::StrCat("decode: ", err->message));
          return false;
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      Retry(c, n == 0 ? std::string("closed by the broker")
                      : herald::StrCat("recv: ", std::strerror(errno)));
      return false;
    }
  }

  void MarkReady(MqttConn& c) {
    c.state = ConnState::kReady;
    s_->ready[static_cast<int>(c.role)].fetch_add(1);
  }

  // False when the connection ended.
  bool Handle(MqttConn& c, mqtt::Packet& packet) {
    if (auto* connack = std::get_if<mqtt::Connack>(&packet)) {
      if (connack->reason_code != mqtt::ReasonCode::kSuccess) {
        Retry(c, herald::StrCat("CONNACK ", mqtt::ReasonCodeName(connack->reason_code)));
        return false;
      }
      const mqtt::Properties& props = connack->properties;
      if (props.receive_maximum) c.window = std::min<int>(c.window, *props.receive_maximum);
      if (props.server_keep_alive) c.keep_alive_s = *props.server_keep_alive;
      if (c.role == ConnRole::kSubscriber) {
        c.state = ConnState::kSubscribing;
        mqtt::Subscribe sub;
        sub.packet_id = 1;
        sub.subscriptions.push_back({.topic_filter = herald::StrCat("bench/", c.topic),
                                     .max_qos = static_cast<mqtt::QoS>(o_.qos)});
        Send(c, sub);
      } else {
        MarkReady(c);
      }
    } else if (auto* suback = std::get_if<mqtt::Suback>(&packet)) {
      if (suback->reason_codes.empty() || static_cast<uint8_t>(suback->reason_codes[0]) >= 0x80) {
        Error(c, "SUBSCRIBE refused");
        Fail(c);
        return false;
      }
      MarkReady(c);
    } else if (auto* pub = std::get_if<mqtt::Publish>(&packet)) {
      OnMessage(c, *pub);
      if (pub->qos == mqtt::QoS::kAtLeastOnce) Send(c, mqtt::Puback{.packet_id = pub->packet_id});
      if (pub->qos == mqtt::QoS::kExactlyOnce) Send(c, mqtt::Pubrec{.packet_id = pub->packet_id});
    } else if (auto* rel = std::get_if<mqtt::Pubrel>(&packet)) {
      Send(c, mqtt::Pubcomp{.packet_id = rel->packet_id});
    } else if (auto* puback = std::get_if<mqtt::Puback>(&packet)) {
      Acknowledged(c, puback->packet_id);
    } else if (auto* rec = std::get_if<mqtt::Pubrec>(&packet)) {
      if (static_cast<uint8_t>(rec->reason_code) >= 0x80) {
        Acknowledged(c, rec->packet_id);
      } else {
        Send(c, mqtt::Pubrel{.packet_id = rec->packet_id});
      }
    } else if (auto* comp = std::get_if<mqtt::Pubcomp>(&packet)) {
      Acknowledged(c, comp->packet_id);
    } else if (auto* d = std::get_if<mqtt::Disconnect>(&packet)) {
      Retry(c, herald::StrCat("DISCONNECT ", mqtt::ReasonCodeName(d->reason_code)));
      return false;
    }
    return true;
  }

  void Acknowledged(MqttConn& c, uint16_t pid) {
    if (c.pid_in_use.empty() || !c.pid_in_use[pid]) return;
    c.pid_in_use[pid] = 0;
    --c.inflight;
    counters.inflight.fetch_sub(1, std::memory_order_relaxed);
  }

  void OnMessage(MqttConn& c, const mqtt::Publish& p) {
    int64_t now = NowNs();
    counters.received.fetch_add(1, std::memory_order_relaxed);
    if (p.payload.size() < kPayloadHeader) return;
    int64_t sent_ns;
    uint32_t publisher, flags;
    uint64_t seq;
    std::memcpy(&sent_ns, p.payload.data(), 8);
    std::memcpy(&publisher, p.payload.data() + 8, 4);
    std::memcpy(&flags, p.payload.data() + 12, 4);
    std::memcpy(&seq, p.payload.data() + 16, 8);
    uint64_t& last = c.last_seq[publisher];
    bool fresh = seq > last;
    if (fresh) {
      last = seq;
      if (publisher < s_->copies_by_publisher.size())
        s_->copies_by_publisher[publisher].fetch_add(1, std::memory_order_relaxed);
    }
    if (!(flags & kMeasured)) return;
    if (!fresh) {
      counters.duplicates.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    counters.received_measured.fetch_add(1, std::memory_order_relaxed);
    int64_t bucket = std::max<int64_t>(0, now - sent_ns) / kBucketNs;
    ++histogram[static_cast<size_t>(std::min<int64_t>(bucket, kLatencyBuckets - 1))];
  }

  // Sends what the publisher may send now; true when it stopped only because of its per-round
  // budget (it wants to be called again at once).
  bool Pump(MqttConn& c, Clock::time_point now, bool measured) {
    if (c.state != ConnState::kReady) return false;
    constexpr size_t kMaxBuffered = 16 << 10;
    constexpr uint64_t kRound = 256;  // messages per publisher per round, for fairness
    uint64_t budget = kRound;
    if (o_.rate > 0) {
      double due = std::chrono::duration<double>(now - publish_start_).count() * o_.rate + 1;
      budget = due > static_cast<double>(c.seq)
                   ? std::min<uint64_t>(budget, static_cast<uint64_t>(due) - c.seq)
                   : 0;
    } else if (o_.qos == 0) {
      // As fast as the subscribers receive: at most `window` messages not yet received by every
      // subscriber of the topic. Copies missing for a second are written off as lost (a broker
      // may drop QoS 0 messages), so a loss does not stop the publisher.
      uint64_t subs = s_->subs_per_topic[static_cast<size_t>(c.topic)];
      if (subs > 0) {
        uint64_t copies =
            s_->copies_by_publisher[static_cast<size_t>(c.index)].load(std::memory_order_relaxed);
        if (copies != c.last_copies || c.window_moved == Clock::time_point{}) {
          c.last_copies = copies;
          c.window_moved = now;
        }
        int64_t per = static_cast<int64_t>(subs);
        int64_t outstanding = static_cast<int64_t>(c.seq * subs - copies - c.written_off);
        int64_t room = static_cast<int64_t>(c.window) - (outstanding + per - 1) / per;
        if (room <= 0 && now - c.window_moved > std::chrono::seconds(1)) {
          c.written_off = c.seq * subs - copies;
          c.window_moved = now;
          room = c.window;
        }
        budget = std::min<uint64_t>(budget, static_cast<uint64_t>(std::max<int64_t>(room, 0)));
      }
    }
    uint64_t sent = 0;
    bool blocked = false;
    while (sent < budget) {
      if (o_.qos > 0 && c.inflight >= c.window) {
        blocked = true;
        break;
      }
      if (c.pending() >= kMaxBuffered) {
        if (!Flush(c)) return false;
        if (c.pending() >= kMaxBuffered) {
          blocked = true;
          break;
        }
      }
      size_t base = c.out.size();
      c.out.append(c.tmpl);
      char* b = c.out.data() + base;
      if (o_.qos > 0) {
        uint16_t pid;
        do {
          pid = c.next_pid++;
          if (c.next_pid == 0) c.next_pid = 1;
        } while (c.pid_in_use[pid]);
        c.pid_in_use[pid] = 1;
        ++c.inflight;
        b[c.pid_off] = static_cast<char>(pid >> 8);
        b[c.pid_off + 1] = static_cast<char>(pid & 0xff);
      }
      int64_t t = NowNs();
      uint32_t publisher = static_cast<uint32_t>(c.index);
      uint32_t flags = measured ? kMeasured : 0;
      ++c.seq;
      std::memcpy(b + c.payload_off, &t, 8);
      std::memcpy(b + c.payload_off + 8, &publisher, 4);
      std::memcpy(b + c.payload_off + 12, &flags, 4);
      std::memcpy(b + c.payload_off + 16, &c.seq, 8);
      ++sent;
    }
    if (sent > 0) {
      counters.sent.fetch_add(sent, std::memory_order_relaxed);
      if (o_.qos > 0)
        counters.inflight.fetch_add(static_cast<int64_t>(sent), std::memory_order_relaxed);
      if (measured) {
        counters.sent_measured.fetch_add(sent, std::memory_order_relaxed);
        s_->sent_by_topic[static_cast<size_t>(c.topic)].fetch_add(sent, std::memory_order_relaxed);
      }
    }
    if (!Flush(c)) return false;
    return o_.rate == 0 && !blocked && sent == kRound;
  }

  MqttShared* s_;
  const MqttOptions& o_;
  int ep_ = -1;
  std::thread thread_;
  std::vector<std::unique_ptr<MqttConn>> conns_;
  std::vector<MqttConn*> by_role_[3];
  std::vector<MqttConn*> pubs_;
  std::vector<MqttConn*> to_open_;
  size_t open_next_ = 0;
  std::vector<MqttConn*> retry_;
  std::vector<mqtt::Packet> packets_;
  Clock::time_point publish_start_{};
};

void RaiseFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

int RunMqtt(const MqttOptions& o) {
  RaiseFileLimit();
  MqttShared shared(o);
  shared.version = o.version == 5 ? mqtt::Version::kV5 : mqtt::Version::kV311;
  shared.addr.sin_family = AF_INET;
  shared.addr.sin_port = htons(static_cast<uint16_t>(o.port));
  if (inet_pton(AF_INET, o.host.c_str(), &shared.addr.sin_addr) != 1) {
    std::fprintf(stderr, "herald-bench: --host must be an IPv4 address, got %s\n", o.host.c_str());
    return 2;
  }
  if (o.size < static_cast<int>(kPayloadHeader)) {
    std::fprintf(stderr, "herald-bench: payloads are at least %zu bytes (send time, sequence)\n",
                 kPayloadHeader);
  }
  std::vector<std::unique_ptr<MqttLoop>> loops;
  for (int i = 0; i < o.threads; ++i) loops.push_back(std::make_unique<MqttLoop>(&shared));
  auto loop_of = [&](int i) -> MqttLoop& { return *loops[static_cast<size_t>(i % o.threads)]; };
  for (int i = 0; i < o.idle; ++i) loop_of(i).Add(ConnRole::kIdle, i);
  for (int i = 0; i < o.subscribers; ++i) loop_of(i).Add(ConnRole::kSubscriber, i);
  for (int i = 0; i < o.publishers; ++i) loop_of(i).Add(ConnRole::kPublisher, i);
  const std::vector<uint64_t>& subs_per_topic = shared.subs_per_topic;

  auto sum = [&](auto field) {
    int64_t total = 0;
    for (auto& l : loops) total += static_cast<int64_t>((l->counters.*field).load());
    return total;
  };
  auto usum = [&](auto field) { return static_cast<uint64_t>(sum(field)); };
  uint64_t rss_before = o.broker_pid ? ResidentBytes(o.broker_pid) : 0;
  for (auto& l : loops) l->Start();

  // Opens the connections of one role and waits until each is ready or has failed.
  auto connect_phase = [&](int phase, int count, const char* what) {
    shared.phase.store(phase, std::memory_order_release);
    if (count == 0) return true;
    auto begin = Clock::now();
    auto deadline = begin + std::chrono::seconds(30 + count / o.connect_rate * 2);
    auto last_print = begin;
    for (;;) {
      int ready = shared.ready[phase].load(), failed = shared.failed[phase].load();
      if (ready + failed >= count) break;
      auto now = Clock::now();
      if (now > deadline) {
        std::fprintf(stderr, "herald-bench: timed out opening %s connections\n", what);
        break;
      }
      if (now - last_print >= std::chrono::seconds(1)) {
        last_print = now;
        std::fprintf(stderr, "  connecting %s: %d/%d ready, %d failed\n", what, ready, count,
                     failed);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    int ready = shared.ready[phase].load();
    std::fprintf(stderr, "  %d/%d %s connections ready in %.1fs\n", ready, count, what,
                 std::chrono::duration<double>(Clock::now() - begin).count());
    return ready == count;
  };
  connect_phase(0, o.idle, "idle");
  uint64_t rss_idle = 0;
  if (o.broker_pid) {
    std::this_thread::sleep_for(std::chrono::seconds(1));  // let the broker settle
    rss_idle = ResidentBytes(o.broker_pid);
  }
  bool all_ready = connect_phase(1, o.subscribers, "subscriber");
  all_ready = connect_phase(2, o.publishers, "publisher") && all_ready;
  if (!all_ready) {
    // Figures with missing clients would not compare with anything: stop here.
    std::fprintf(stderr, "herald-bench: not every publisher and subscriber is ready; stopping\n");
    shared.phase.store(5, std::memory_order_release);
    for (auto& l : loops) l->Join();
    return 1;
  }

  // Publishing: warm-up, then the measured window, then a drain of what is still in flight.
  shared.phase.store(3, std::memory_order_release);
  auto begin = Clock::now();
  uint64_t last_sent = 0, last_received = 0;
  auto progress = [&](const char* tag) {
    uint64_t sent = usum(&MqttCounters::sent), received = usum(&MqttCounters::received);
    std::fprintf(stderr, "  %5.1fs  sent %9llu/s  received %9llu/s  in flight %lld  %s\n",
                 std::chrono::duration<double>(Clock::now() - begin).count(),
                 static_cast<unsigned long long>(sent - last_sent),
                 static_cast<unsigned long long>(received - last_received),
                 static_cast<long long>(sum(&MqttCounters::inflight)), tag);
    last_sent = sent;
    last_received = received;
  };
  auto run_for = [&](double seconds, const char* tag) {
    auto end = Clock::now() + std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
    auto next = Clock::now() + std::chrono::seconds(1);
    while (Clock::now() < end) {
      std::this_thread::sleep_until(std::min(next, end));
      if (Clock::now() >= next) {
        progress(tag);
        next += std::chrono::seconds(1);
      }
    }
  };
  if (o.warmup_s > 0) run_for(o.warmup_s, "(warm-up)");
  shared.measuring.store(true);
  auto measure_begin = Clock::now();
  run_for(o.duration_s, "");
  shared.measuring.store(false);
  double measured_s = std::chrono::duration<double>(Clock::now() - measure_begin).count();
  shared.phase.store(4, std::memory_order_release);

  auto expected_now = [&] {
    uint64_t e = 0;
    for (size_t t = 0; t < subs_per_topic.size(); ++t)
      e += shared.sent_by_topic[t].load() * subs_per_topic[t];
    return e;
  };
  uint64_t expected = expected_now();
  {
    // Drain: until everything expected arrived, or nothing arrived for 2 s (at most 15 s).
    auto drain_end = Clock::now() + std::chrono::seconds(15);
    uint64_t last = usum(&MqttCounters::received_measured);
    auto last_progress = Clock::now();
    while (Clock::now() < drain_end) {
      uint64_t got = usum(&MqttCounters::received_measured);
      if (got >= expected && sum(&MqttCounters::inflight) <= 0) break;
      if (got != last) {
        last = got;
        last_progress = Clock::now();
      } else if (Clock::now() - last_progress > std::chrono::seconds(2)) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  uint64_t rss_end = o.broker_pid ? ResidentBytes(o.broker_pid) : 0;
  shared.phase.store(5, std::memory_order_release);
  for (auto& l : loops) l->Join();

  uint64_t sent = usum(&MqttCounters::sent_measured);
  uint64_t received = usum(&MqttCounters::received_measured);
  uint64_t duplicates = usum(&MqttCounters::duplicates);
  uint64_t lost = expected > received ? expected - received : 0;
  std::vector<uint64_t> hist(kLatencyBuckets, 0);
  for (auto& l : loops)
    for (size_t i = 0; i < kLatencyBuckets; ++i) hist[i] += l->histogram[i];
  auto pct = [&](double q) -> double {
    if (received == 0) return 0;
    uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(q * static_cast<double>(received)));
    uint64_t cum = 0;
    for (size_t i = 0; i < kLatencyBuckets; ++i) {
      cum += hist[i];
      if (cum >= rank) return static_cast<double>((i + 1) * kBucketNs) / 1e6;
    }
    return static_cast<double>(kLatencyBuckets * kBucketNs) / 1e6;
  };
  double rate = static_cast<double>(received) / measured_s;
  double p50 = pct(0.5), p99 = pct(0.99), p999 = pct(0.999);
  int idle_ready = shared.ready[0].load();
  double per_idle =
      idle_ready > 0 && rss_idle > 0
          ? (static_cast<double>(rss_idle) - static_cast<double>(rss_before)) / idle_ready
          : 0;
  int lost_connections = shared.lost_after_ready.load();
  int failed_connections =
      shared.failed[0].load() + shared.failed[1].load() + shared.failed[2].load();

  std::printf(
      "mqtt: v%s qos=%d publishers=%d subscribers=%d topics=%d size=%dB rate=%s "
      "duration=%.1fs\n",
      o.version == 5 ? "5.0" : "3.1.1", o.qos, o.publishers, o.subscribers, o.topics,
      std::max(o.size, static_cast<int>(kPayloadHeader)),
      o.rate > 0 ? Fixed(o.rate, 0).c_str() : "max", measured_s);
  if (o.publishers > 0) {
    std::printf("  messages sent      %llu\n", static_cast<unsigned long long>(sent));
    std::printf("  received           %llu (expected %llu, lost %llu, duplicates %llu)\n",
                static_cast<unsigned long long>(received),
                static_cast<unsigned long long>(expected), static_cast<unsigned long long>(lost),
                static_cast<unsigned long long>(duplicates));
    std::printf("  delivered          %.0f msg/s\n", rate);
    std::printf("  latency            p50 %.2f ms, p99 %.2f ms, p999 %.2f ms\n", p50, p99, p999);
  }
  if (failed_connections > 0 || lost_connections > 0) {
    std::printf("  connections        %d failed to open, %d lost while running\n",
                failed_connections, lost_connections);
  }
  if (o.broker_pid) {
    std::printf(
        "  broker RSS         before %.1f MiB, after %d idle connections %.1f MiB, "
        "end %.1f MiB\n",
        static_cast<double>(rss_before) / 1048576, idle_ready,
        static_cast<double>(rss_idle) / 1048576, static_cast<double>(rss_end) / 1048576);
    if (o.idle > 0) std::printf("  idle connection    %.0f bytes each\n", per_idle);
  }
  std::string json = herald::StrCat(
      "{\"mode\":\"mqtt\",\"version\":", o.version, ",\"qos\":", o.qos,
      ",\"publishers\":", o.publishers, ",\"subscribers\":", o.subscribers,
      ",\"topics\":", o.topics, ",\"size\":", std::max(o.size, static_cast<int>(kPayloadHeader)),
      ",\"rate\":", Fixed(o.rate, 1), ",\"duration_s\":", Fixed(measured_s, 3), ",\"sent\":", sent,
      ",\"received\":", received, ",\"expected\":", expected, ",\"lost\":", lost,
      ",\"duplicates\":", duplicates, ",\"delivered_per_s\":", Fixed(rate, 1),
      ",\"p50_ms\":", Fixed(p50, 3), ",\"p99_ms\":", Fixed(p99, 3), ",\"p999_ms\":", Fixed(p999, 3),
      ",\"idle_connections\":", idle_ready, ",\"failed_connections\":", failed_connections,
      ",\"lost_connections\":", lost_connections);
  if (o.broker_pid) {
    herald::StrAppend(&json, ",\"rss_before\":", rss_before, ",\"rss_after_idle\":", rss_idle,
                      ",\"rss_end\":", rss_end,
                      ",\"bytes_per_idle_connection\":", Fixed(per_idle, 0));
  }
  json += "}";
  std::printf("RESULT %s\n", json.c_str());
  std::fflush(stdout);
  if (o.publishers > 0 && received == 0) return 1;
  return failed_connections > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  // abseil's deadlock detection (on in Debian's build) costs the load generator CPU inside
  // gRPC's locks, CPU the measured servers then lack.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::string mode = argc >= 2 ? argv[1] : "";
  if (mode == "publish") {
    Options o;
    if (ParseFlags(argc, argv, &o)) return RunPublish(o);
  } else if (mode == "mqtt") {
    MqttOptions o;
    if (ParseMqttFlags(argc, argv, &o)) return RunMqtt(o);
  }
  std::fprintf(stderr,
               "usage: herald-bench publish [--servers=host:port,...] [--partitions=8] "
               "[--publishers=50] [--batch=1] [--payload=100] [--topics=100] "
               "[--duration=10s] [--warmup=1s]\n"
               "       herald-bench mqtt [--host 127.0.0.1] [--port 1883] [--publishers 1] "
               "[--subscribers 1] [--topics 1] [--qos 0|1|2] [--size 100] [--rate 0] "
               "[--duration 10] [--warmup 1] [--version 4|5] [--idle-connections 0] "
               "[--broker-pid PID] [--threads 2] [--window 64] [--connect-rate 1000]\n");
  return 2;
}
