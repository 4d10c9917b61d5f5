#!/usr/bin/python3
"""Cluster: a persistent MQTT session survives the loss of a partition leader mid-stream.

For each variant a fresh cluster of 3 herald-core (fsync on) and 2 herald-edge processes is
started on free loopback ports in a temporary directory (the topology of
`tools/dev cluster up --cores 3 --edges 2`). Then, with the paho-mqtt client
(Debian python3-paho-mqtt):

  1. a persistent subscriber (5.0: Clean Start 0 and Session Expiry Interval 300; 3.1.1: Clean
     Session 0) connects to edge 1, subscribes QoS 1 to a filter and disconnects cleanly;
  2. a publisher sends 1,000 QoS 1 messages (payload "<index>") through edge 2 with a window of
     in-flight messages; after 300 are acknowledged the leader of the topic's partition is killed
     with SIGKILL; the publisher reconnects and resends (paho resends unacknowledged QoS 1
     messages with DUP set; a 5.0 PUBACK with a failure reason code is republished) until all
     1,000 are acknowledged;
  3. the subscriber reconnects (5.0 through edge 2, 3.1.1 through edge 1), must get Session
     Present, and must receive every message exactly once, in order.

Prints the failover time (from the kill to the next PUBACK, and the longest PUBACK gap after the
kill) and "N passed, N failed". Every process is stopped on exit, also on failure.

usage: mqtt_session_cluster_test.py BIN_DIR
"""
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CORES = 3
EDGES = 2
PARTITIONS = 64
MESSAGES = 1000
KILL_AFTER = 300
WINDOW = 10
SYNC = "true"


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when this test process dies, even by SIGKILL (ctest
    timeout), so no herald process outlives the test."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # runs the finally blocks that stop the processes


_HANDED_OUT = set()  # ports free_port returned: each once per run


def free_port():
    """A port free a moment ago, below the kernel's ephemeral range (as tests/support/process.cc
    PickFreePort): no port-0 listener or outgoing connection can take it before its server
    binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100 if low - 10000 >= 1000 else 0):
        port = random.randrange(10000, low)
        if port in _HANDED_OUT:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            _HANDED_OUT.add(port)
            return port
        except OSError:
            continue
        finally:
            s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def partition_for(key, partitions=PARTITIONS):
    """libs/common/partitioning.cc: 64-bit FNV-1a of the bytes, mod the partition count."""
    h = 0xcbf29ce484222325
    for c in key.encode():
        h ^= c
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % partitions


class Proc:
    def __init__(self, name, args, log_path):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)

    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log_path) as f:
                for line in f:
                    if line.rstrip().endswith(" ready"):
                        return
            if not self.alive():
                break
            time.sleep(0.1)
        raise RuntimeError("%s did not become ready:\n%s" % (self.name, self.tail()))

    def tail(self, n=15):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Cluster:
    def __init__(self, bin_dir, tag):
        self.bin_dir = bin_dir
        self.dir = tempfile.mkdtemp(prefix="herald-sesscluster-%s-" % tag)
        self.cores = {}  # node id -> Proc
        self.edges = []  # Procs
        self.core_addrs = {i: "127.0.0.1:%d" % free_port() for i in range(1, CORES + 1)}
        self.edge_mqtt = [free_port() for _ in range(EDGES)]
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        peers = ",".join("%d=%s" % (i, a) for i, a in self.core_addrs.items())
        for i, addr in self.core_addrs.items():
            self.cores[i] = Proc("core-%d" % i, [
                os.path.join(self.bin_dir, "herald-core"), "--core.node_id=%d" % i,
                "--core.listen=" + addr, "--cluster.peers=" + peers,
                "--admin.listen=127.0.0.1:%d" % free_port(),
                "--data_dir=" + os.path.join(self.dir, "core-%d" % i),
                "--storage.sync=" + SYNC, "--storage.block_cache=16MiB",
            ], os.path.join(self.dir, "core-%d.log" % i))
        for p in self.cores.values():
            p.wait_ready()
        cores = ",".join(self.core_addrs.values())
        for j in range(EDGES):
            self.edges.append(Proc("edge-%d" % (j + 1), [
                os.path.join(self.bin_dir, "herald-edge"), "--edge.core=" + cores,
                "--mqtt.listen=127.0.0.1:%d" % self.edge_mqtt[j],
                "--mqtt.tls_listen=127.0.0.1:%d" % free_port(),
                "--http.listen=127.0.0.1:%d" % free_port(),
                "--admin.listen=127.0.0.1:%d" % free_port(),
            ], os.path.join(self.dir, "edge-%d.log" % (j + 1))))
        for p in self.edges:
            p.wait_ready()
        self.wait_all_leaders()

    def ctl(self, *args, timeout=15):
        servers = ",".join(a for i, a in self.core_addrs.items() if self.cores[i].alive())
        r = subprocess.run([os.path.join(self.bin_dir, "heraldctl"), "--servers=" + servers,
                            "--timeout=3s"] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        return r

    def partitions(self):
        r = self.ctl("--json", "partitions")
        if r.returncode != 0:
            raise RuntimeError("heraldctl partitions: %s" % r.stderr.strip())
        return json.loads(r.stdout)

    def leader_of(self, partition):
        doc = self.partitions()
        rows = doc["partitions"] if isinstance(doc, dict) else doc
        for p in rows:
            if int(p.get("partition", p.get("id", -1))) == partition:
                leader = p.get("leader")
                return int(leader) if leader else None
        return None

    def wait_all_leaders(self, timeout=30):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                doc = self.partitions()
                rows = doc["partitions"] if isinstance(doc, dict) else doc
                if len(rows) == PARTITIONS and all(p.get("leader") for p in rows):
                    return
                last = "%d partitions, %d with a leader" % (
                    len(rows), sum(1 for p in rows if p.get("leader")))
            except Exception as e:  # not up yet
                last = str(e)
            time.sleep(0.3)
        raise RuntimeError("not every partition has a leader: %s" % last)

    def stop(self):
        for p in self.edges + list(self.cores.values()):
            try:
                p.stop()
            except Exception:
                pass

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- clients ----

class AckClient(mqtt.Client):
    """A paho client that remembers the reason code of each PUBACK (paho 1.x drops it)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.puback_rc = {}

    def _handle_pubackcomp(self, cmd):
        if self._protocol == mqtt.MQTTv5 and self._in_packet["remaining_length"] > 2:
            pkt = self._in_packet["packet"]
            mid = int.from_bytes(pkt[:2], "big")
            self.puback_rc[mid] = pkt[2]
        return super()._handle_pubackcomp(cmd)


def connect_wait(c, port, version, clean, timeout=15):
    """Connects (loop thread started); returns the CONNACK's session-present flag."""
    done = threading.Event()
    result = {}

    def on_connect(cl, userdata, flags, rc, properties=None):
        if "rc" not in result:
            result["rc"] = rc
            result["sp"] = flags.get("session present", 0)
            done.set()

    c.on_connect = on_connect
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect("127.0.0.1", port, keepalive=30, clean_start=clean,
                  properties=None if clean else props)
    else:
        c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not done.wait(timeout):
        raise AssertionError("no CONNACK from 127.0.0.1:%d" % port)
    if result["rc"] != 0:
        raise AssertionError("CONNACK refused: %s" % result["rc"])
    return bool(result["sp"])


def disconnect_wait(c):
    gone = threading.Event()
    c.on_disconnect = lambda *a: gone.set()
    c.disconnect()
    gone.wait(5)
    c.loop_stop()


def run_variant(bin_dir, version):
    v5 = version == mqtt.MQTTv5
    tag = "v5" if v5 else "v311"
    topic = "sess/%s/data" % tag
    topic_filter = "sess/%s/+" % tag
    partition = partition_for(topic)
    sub_id = "sess-sub-" + tag
    reconnect_edge = 1 if v5 else 0  # 5.0 comes back through edge 2, 3.1.1 through edge 1
    cluster = Cluster(bin_dir, tag)
    ok = False
    try:
        edge1, edge2 = cluster.edge_mqtt
        print("[%s] cluster up in %s; topic %r -> partition %d (session %r -> partition %d)"
              % (tag, cluster.dir, topic, partition, sub_id, partition_for(sub_id)), flush=True)

        # The partition function here must be the cluster's: heraldctl maps a probe topic.
        probe = "probe/" + tag
        r = cluster.ctl("--json", "publish", "--topic=" + probe, "--message=x", "--qos=1")
        if r.returncode != 0:
            raise AssertionError("heraldctl publish: %s" % r.stderr.strip())
        ctl_partition = json.loads(r.stdout.splitlines()[0])["partition"]
        if ctl_partition != partition_for(probe):
            raise AssertionError("partition of %r: heraldctl says %s, FNV-1a here %d" %
                                 (probe, ctl_partition, partition_for(probe)))

        # 1. Persistent subscriber on edge 1: subscribe and leave.
        sub = mqtt.Client(client_id=sub_id, protocol=version,
                          **({} if v5 else {"clean_session": False}))
        sub_sp = connect_wait(sub, edge1, version, clean=False)
        subscribed = threading.Event()
        granted = {}

        def on_subscribe(cl, ud, mid, qos_or_rcs, properties=None):
            granted["q"] = qos_or_rcs
            subscribed.set()

        sub.on_subscribe = on_subscribe
        sub.subscribe(topic_filter, qos=1)
        if not subscribed.wait(15):
            raise AssertionError("no SUBACK")
        q = granted["q"][0]
        q = getattr(q, "value", q)
        if q != 1:
            raise AssertionError("SUBACK granted %r, expected QoS 1" % (q,))
        disconnect_wait(sub)
        print("[%s] subscriber %s subscribed %r on edge 1 (session present at first connect: "
              "%s) and disconnected" % (tag, sub_id, topic_filter, sub_sp), flush=True)

        # 2. Publisher on edge 2 with a window; kill the topic's leader after KILL_AFTER acks.
        pub = AckClient(client_id="sess-pub-" + tag, protocol=version)
        pub.max_inflight_messages_set(WINDOW)
        pub.max_queued_messages_set(0)
        pub.reconnect_delay_set(min_delay=0.2, max_delay=1)
        # paho calls on_publish holding its own lock, so the callback only queues the PUBACK;
        # this thread (the only one that publishes) maps packet ids to message indexes.
        acks = queue.Queue()
        counters = {"connects": 0, "disconnects": 0}

        def on_publish(cl, ud, mid):
            acks.put((mid, cl.puback_rc.pop(mid, 0), time.time()))

        def on_pub_connect(cl, ud, flags, rc, properties=None):
            counters["connects"] += 1

        def on_pub_disconnect(cl, ud, rc, properties=None):
            counters["disconnects"] += 1

        pub.on_publish = on_publish
        connect_wait(pub, edge2, version, clean=True)
        pub.on_connect = on_pub_connect
        pub.on_disconnect = on_pub_disconnect
        mid2idx = {}
        acked = set()
        ack_times = []
        refused = 0

        def send(idx):
            info = pub.publish(topic, str(idx), qos=1)
            mid2idx[info.mid] = idx

        def drain(wait):
            nonlocal refused
            try:
                mid, rc, t = acks.get(timeout=wait)
            except queue.Empty:
                return
            while True:
                idx = mid2idx.pop(mid, None)
                if idx is not None:
                    if rc >= 0x80:
                        refused += 1
                        print("[%s] PUBACK reason 0x%02x for message %d; republishing" %
                              (tag, rc, idx), flush=True)
                        send(idx)
                    else:
                        acked.add(idx)
                        ack_times.append(t)
                try:
                    mid, rc, t = acks.get_nowait()
                except queue.Empty:
                    return

        leader = cluster.leader_of(partition)
        print("[%s] publishing %d QoS 1 messages through edge 2 (window %d); partition %d is "
              "led by core %s" % (tag, MESSAGES, WINDOW, partition, leader), flush=True)
        for i in range(MESSAGES):
            send(i)  # paho keeps WINDOW in flight and queues the rest, in order
        deadline = time.time() + 120
        while len(acked) < KILL_AFTER and time.time() < deadline:
            drain(0.05)
        if len(acked) < KILL_AFTER:
            raise AssertionError("only %d of %d acknowledged before the kill point" %
                                 (len(acked), KILL_AFTER))
        leader = cluster.leader_of(partition)
        if leader is None:
            raise AssertionError("partition %d has no leader before the kill" % partition)
        t_kill = time.time()
        cluster.cores[leader].kill9()
        acked_at_kill = len(acked)
        print("[%s] killed core %d (leader of partition %d) with SIGKILL after %d PUBACKs"
              % (tag, leader, partition, acked_at_kill), flush=True)

        deadline = time.time() + 180
        while len(acked) < MESSAGES and time.time() < deadline:
            drain(0.1)
        pub_info = "reconnects %d, disconnects %d, PUBACKs with a failure code %d" % (
            counters["connects"], counters["disconnects"], refused)
        disconnect_wait(pub)
        if len(acked) != MESSAGES:
            missing = sorted(set(range(MESSAGES)) - acked)
            raise AssertionError("publisher: %d of %d acknowledged within 180 s (%s); first "
                                 "unacknowledged: %s" % (len(acked), MESSAGES, pub_info,
                                                         missing[:20]))
        after = [t for t in ack_times if t >= t_kill]
        first_after = after[0] - t_kill if after else float("nan")
        gaps = [b - a for a, b in zip([t_kill] + after, after)]
        print("[%s] all %d acknowledged (%s)" % (tag, MESSAGES, pub_info), flush=True)
        print("[%s] FAILOVER: first PUBACK %.3f s after the kill; longest PUBACK gap after the "
              "kill %.3f s" % (tag, first_after, max(gaps) if gaps else float("nan")), flush=True)

        # 3. The subscriber comes back and must find every message once, in order.
        got = []
        got_lock = threading.Lock()

        def on_message(cl, ud, msg):
            with got_lock:
                got.append((msg.payload.decode(errors="replace"), msg.dup))

        sub2 = mqtt.Client(client_id=sub_id, protocol=version,
                           **({} if v5 else {"clean_session": False}))
        sub2.on_message = on_message
        port = cluster.edge_mqtt[reconnect_edge]
        sp = connect_wait(sub2, port, version, clean=False)
        print("[%s] subscriber reconnected through edge %d: session present = %s" %
              (tag, reconnect_edge + 1, sp), flush=True)
        deadline = time.time() + 90
        last_n, last_change = 0, time.time()
        while time.time() < deadline:
            with got_lock:
                n = len(got)
            if n != last_n:
                last_n, last_change = n, time.time()
            if n >= MESSAGES and time.time() - last_change > 1.5:
                break  # a duplicate would have arrived by now
            if time.time() - last_change > 20:
                break
            time.sleep(0.1)
        disconnect_wait(sub2)
        with got_lock:
            payloads = [p for p, _ in got]
            dups_flagged = sum(1 for _, d in got if d)
        errors = []
        if not sp:
            errors.append("CONNACK session present = 0 on reconnect")
        errors += check_stream(payloads)
        print("[%s] subscriber received %d messages (%d with DUP set)" %
              (tag, len(payloads), dups_flagged), flush=True)
        if errors:
            raise AssertionError("; ".join(errors))
        ok = True
    finally:
        if not ok:
            for p in list(cluster.cores.values()) + cluster.edges:
                print("---- last lines of %s (%s) ----\n%s" %
                      (p.name, "alive" if p.alive() else "exited %s" % p.proc.returncode,
                       p.tail(8)), flush=True)
        cluster.stop()
        cluster.cleanup()


def check_stream(payloads):
    errors = []
    idx = []
    for p in payloads:
        try:
            idx.append(int(p))
        except ValueError:
            errors.append("unexpected payload %r" % p)
    counts = {}
    for i in idx:
        counts[i] = counts.get(i, 0) + 1
    missing = [i for i in range(MESSAGES) if i not in counts]
    dups = sorted(i for i, n in counts.items() if n > 1)
    if missing:
        errors.append("%d missing: %s%s" % (len(missing), missing[:30],
                                            " ..." if len(missing) > 30 else ""))
    if dups:
        errors.append("%d duplicated: %s%s" % (len(dups), [(i, counts[i]) for i in dups[:30]],
                                               " ..." if len(dups) > 30 else ""))
    # Order: the first arrival of each index must be increasing.
    seen = set()
    firsts = []
    for i in idx:
        if i not in seen:
            seen.add(i)
            firsts.append(i)
    out_of_order = [(a, b) for a, b in zip(firsts, firsts[1:]) if b < a]
    if out_of_order:
        errors.append("%d out of order (previous, next): %s" % (len(out_of_order),
                                                               out_of_order[:20]))
    if errors:
        # Where the duplicates sit in the stream helps to tell a redelivery from a re-append.
        pos = [k for k, i in enumerate(idx) if counts.get(i, 0) > 1]
        if pos:
            errors.append("duplicates at stream positions %s" % pos[:30])
    return errors


def run_shared(bin_dir):
    """$share/g/... with one member on each edge: every message reaches exactly one member."""
    cluster = Cluster(bin_dir, "shared")
    try:
        got = {0: [], 1: []}
        lock = threading.Lock()
        members = []
        for j in range(EDGES):
            c = mqtt.Client(client_id="member-%d" % j, protocol=mqtt.MQTTv5)

            def on_message(cl, userdata, msg, j=j):
                with lock:
                    got[j].append(int(msg.payload))

            c.on_message = on_message
            connect_wait(c, cluster.edge_mqtt[j], mqtt.MQTTv5, clean=True)
            subscribed = threading.Event()
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe("$share/g/shared/t", qos=1)
            if not subscribed.wait(10):
                raise AssertionError("no SUBACK for the shared subscription on edge %d" % (j + 1))
            members.append(c)
        time.sleep(1.0)  # both edges' streams carry the group on every core node
        pub = mqtt.Client(client_id="shared-pub", protocol=mqtt.MQTTv5)
        connect_wait(pub, cluster.edge_mqtt[0], mqtt.MQTTv5, clean=True)
        total = 200
        for i in range(total):
            pub.publish("shared/t", str(i), qos=1).wait_for_publish(10)
        deadline = time.time() + 20
        while time.time() < deadline:
            with lock:
                if len(got[0]) + len(got[1]) >= total:
                    break
            time.sleep(0.1)
        time.sleep(0.5)  # anything extra (a duplicate) arrives now
        with lock:
            a, b = list(got[0]), list(got[1])
        print("shared subscription: edge 1 member got %d, edge 2 member got %d" % (len(a), len(b)),
              flush=True)
        both = a + b
        if sorted(both) != list(range(total)):
            missing = sorted(set(range(total)) - set(both))
            dup = sorted(i for i in set(both) if both.count(i) > 1)
            raise AssertionError("shared delivery: %d messages, missing %s, duplicated %s" %
                                 (len(both), missing[:20], dup[:20]))
        if not a or not b:
            raise AssertionError("one member got nothing: %d / %d" % (len(a), len(b)))
        for c in members + [pub]:
            disconnect_wait(c)
    finally:
        cluster.stop()
        cluster.cleanup()


def main():
    bin_dir = sys.argv[1]
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    variants = [
        ("MQTT 5.0 persistent session (clean_start=0, expiry 300), back through edge 2",
         mqtt.MQTTv5),
        ("MQTT 3.1.1 persistent session (clean_session=0), back through edge 1", mqtt.MQTTv311),
    ]
    passed = failed = 0
    try:
        run_shared(bin_dir)
        print("ok   shared subscription across two edges", flush=True)
        passed += 1
    except Exception as e:
        print("FAIL shared subscription across two edges: %s" % e, flush=True)
        failed += 1
    for name, version in variants:
        try:
            run_variant(bin_dir, version)
            print("ok   " + name, flush=True)
            passed += 1
        except Exception as e:  # report every variant
            print("FAIL %s: %s" % (name, e), flush=True)
            failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
