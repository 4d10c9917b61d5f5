#!/usr/bin/python3
"""Interop: malformed and abusive MQTT input against a real `herald`, over raw TCP sockets.

Starts herald on free loopback ports with --mqtt.max_packet_size=1KiB. Every case sends packets
built by hand (no client library) and checks the reaction the spec names: MQTT 5.0 a DISCONNECT
(or CONNACK) with the named reason code and then the connection closed; MQTT 3.1.1 the
connection closed without any packet (3.1.1 has no server DISCONNECT) or the CONNACK return code
the spec names. After every case another client must still connect and do a QoS 1 round trip.
Prints a table "case | expected | observed | ok" and "N passed, N failed".

usage: mqtt_bad_input_test.py BIN_DIR
"""
import signal
import socket
import struct
import sys
import threading
import time

from herald_process import Herald

V311 = 4
V5 = 5

# Packet types (MQTT 5.0 §2.1.2).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
TYPE_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
              7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
              12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

MAX_PACKET_SIZE = 1024
CONNECT_TIMEOUT_S = 10  # libs/edge/mqtt_server.h MqttServerOptions::connect_timeout, no option


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # runs the finally blocks that stop the processes


# ---- packet builders ----

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("!H", len(b)) + b


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def connect_packet(version, client_id, keep_alive=30, clean=True, proto_name=b"MQTT",
                   level=None):
    level = version if level is None else level
    flags = 0x02 if clean else 0x00
    vh = mqtt_str(proto_name) + bytes([level, flags]) + struct.pack("!H", keep_alive)
    if version == V5:
        vh += varint(0)  # no properties
    return packet(CONNECT, 0, vh + mqtt_str(client_id))


def publish_packet(version, topic, payload, qos=0, packet_id=1, flags=None):
    fl = (qos << 1) if flags is None else flags
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == V5:
        body += varint(0)
    return packet(PUBLISH, fl, body + payload)


def subscribe_packet(version, topic_filter, qos=1, packet_id=1, flags=0x02):
    body = struct.pack("!H", packet_id)
    if version == V5:
        body += varint(0)
    body += mqtt_str(topic_filter) + bytes([qos])
    return packet(SUBSCRIBE, flags, body)


def puback_packet(packet_id):
    return packet(PUBACK, 0, struct.pack("!H", packet_id))


# ---- a raw connection ----

class Closed(Exception):
    pass


class Raw:
    """One TCP connection; reads whole MQTT packets."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.version = V5

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                raise Closed("reset")
            if not chunk:
                raise Closed("eof")
            self.buf += chunk

    def read_packet(self, timeout=5.0):
        """(type, flags, body); raises Closed on EOF/reset, socket.timeout on silence."""
        deadline = time.time() + timeout
        self._fill(2, deadline)
        n = 0
        mult = 1
        i = 1
        while True:
            self._fill(i + 1, deadline)
            b = self.buf[i]
            n += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80 or i > 4:
                break
        self._fill(i + n, deadline)
        first = self.buf[0]
        body = self.buf[i:i + n]
        self.buf = self.buf[i + n:]
        return first >> 4, first & 0x0F, body

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def describe(ptype, flags, body):
    name = TYPE_NAMES.get(ptype, "type%d" % ptype)
    if ptype == CONNACK and len(body) >= 2:
        wire = bytes([(ptype << 4) | flags]) + varint(len(body)) + body
        return "CONNACK rc=0x%02x [%s]" % (body[1], wire.hex(" "))
    if ptype == DISCONNECT:
        rc = body[0] if body else 0
        return "DISCONNECT rc=0x%02x" % rc
    return "%s(flags=%d, %d bytes)" % (name, flags, len(body))


def observe(conn, timeout=5.0, limit=4):
    """Reads until close or silence: (list of packet descriptions, "closed"/"open", seconds)."""
    start = time.time()
    seen = []
    raw = []
    try:
        while len(seen) < limit:
            p = conn.read_packet(timeout - (time.time() - start))
            seen.append(describe(*p))
            raw.append(p)
    except Closed:
        return seen, raw, "closed", time.time() - start
    except socket.timeout:
        return seen, raw, "open", time.time() - start
    return seen, raw, "open", time.time() - start


def open_session(port, version, client_id, keep_alive=30):
    """Connects; returns the Raw connection after a successful CONNACK."""
    c = Raw(port)
    c.version = version
    c.send(connect_packet(version, client_id, keep_alive=keep_alive))
    t, _, body = c.read_packet()
    if t != CONNACK or body[1] != 0:
        raise AssertionError("CONNACK expected, got %s" % describe(t, 0, body))
    return c


# ---- the health check after every case ----

_health_n = [0]


def qos1_round_trip(port):
    """A fresh 5.0 client subscribes QoS 1, publishes QoS 1 to itself, gets PUBACK and the
    message. Raises AssertionError when the broker no longer serves."""
    _health_n[0] += 1
    n = _health_n[0]
    topic = "health/%d" % n
    c = open_session(port, V5, "health-%d" % n)
    try:
        c.send(subscribe_packet(V5, topic, qos=1, packet_id=1))
        t, _, body = c.read_packet()
        if t != SUBACK or body[-1] != 1:
            raise AssertionError("health: SUBACK granting QoS 1 expected, got %s" %
                                 describe(t, 0, body))
        payload = b"ping-%d" % n
        c.send(publish_packet(V5, topic, payload, qos=1, packet_id=2))
        got_ack = got_msg = False
        deadline = time.time() + 5
        while not (got_ack and got_msg):
            t, fl, body = c.read_packet(max(0.1, deadline - time.time()))
            if t == PUBACK and body[:2] == struct.pack("!H", 2):
                got_ack = True
            elif t == PUBLISH:
                tl = struct.unpack("!H", body[:2])[0]
                rest = body[2 + tl:]
                pid = struct.unpack("!H", rest[:2])[0]
                plen_start = 2
                # properties
                plen, k, mult = 0, 0, 1
                while True:
                    b = rest[plen_start + k]
                    plen += (b & 0x7F) * mult
                    mult *= 128
                    k += 1
                    if not b & 0x80:
                        break
                data = rest[plen_start + k + plen:]
                c.send(puback_packet(pid))
                if data != payload:
                    raise AssertionError("health: unexpected payload %r" % data)
                got_msg = True
        c.send(packet(DISCONNECT, 0, b""))
    except (Closed, socket.timeout) as e:
        raise AssertionError("health: QoS 1 round trip failed (%s)" % (type(e).__name__,))
    finally:
        c.close()


# ---- expectations ----

def expect_v5_disconnect(codes):
    """5.0: a DISCONNECT with one of `codes` and then the connection closed."""
    def check(seen, raw, state):
        if state != "closed":
            return False
        if len(raw) != 1:
            return False
        t, _, body = raw[0]
        rc = body[0] if body else 0
        return t == DISCONNECT and rc in codes
    return ("DISCONNECT %s, close" % "/".join("0x%02x" % c for c in codes)), check


def expect_v311_close():
    """3.1.1: the connection closed, no packet before."""
    def check(seen, raw, state):
        return state == "closed" and not raw
    return "close (no packet)", check


def expect_connack_then_close(codes, optional=False):
    def check(seen, raw, state):
        if state != "closed":
            return False
        if not raw:
            return optional
        if len(raw) != 1:
            return False
        t, _, body = raw[0]
        return t == CONNACK and len(body) >= 2 and body[1] in codes
    what = "CONNACK %s, close" % "/".join("0x%02x" % c for c in codes)
    if optional:
        what = "close, or " + what
    return what, check


def expect_for(version, v5_codes):
    return expect_v5_disconnect(v5_codes) if version == V5 else expect_v311_close()


# ---- cases ----
# Each returns (expected, observed, ok). `port` is herald's MQTT port.

def vname(version):
    return "5.0" if version == V5 else "3.1.1"


def run_after_connect(port, version, name, data, v5_codes):
    """Connects properly, sends `data`, observes the reaction."""
    c = open_session(port, version, "bad-" + name)
    try:
        c.send(data)
        seen, raw, state, _ = observe(c)
    finally:
        c.close()
    expected, check = expect_for(version, v5_codes)
    return expected, fmt(seen, state), check(seen, raw, state)


def fmt(seen, state, secs=None):
    s = ", ".join(seen) if seen else "no packet"
    s += ", then " + ("connection closed" if state == "closed" else "connection still open")
    if secs is not None:
        s += " after %.2fs" % secs
    return s


def case_wrong_protocol_name(port, version):
    c = Raw(port)
    try:
        c.send(connect_packet(version, "bad-name", proto_name=b"MQTX"))
        seen, raw, state, _ = observe(c)
    finally:
        c.close()
    # 5.0 §3.1.2.1 / 3.1.1 §3.1.2.1: the server MAY disconnect; 5.0 may send CONNACK 0x84 first.
    codes = [0x84] if version == V5 else [0x01]
    expected, check = expect_connack_then_close(codes, optional=True)
    return expected, fmt(seen, state), check(seen, raw, state)


def case_protocol_level_6(port, version):
    c = Raw(port)
    try:
        c.send(connect_packet(version, "bad-level", level=6))
        seen, raw, state, _ = observe(c)
    finally:
        c.close()
    # 3.1.1 §3.1.2.2: CONNACK 0x01 and disconnect; 5.0 §3.1.2.2: CONNACK 0x84 and close.
    expected, check = expect_connack_then_close([0x84, 0x01])
    return expected, fmt(seen, state), check(seen, raw, state)


def case_subscribe_flags_0(port, version):
    data = subscribe_packet(version, "a/b", qos=1, packet_id=7, flags=0x00)
    return run_after_connect(port, version, "subflags", data, [0x81])


def case_pubrel_flags_0(port, version):
    data = packet(PUBREL, 0x00, struct.pack("!H", 9))
    return run_after_connect(port, version, "pubrelflags", data, [0x81])


def case_remaining_length_5_bytes(port, version):
    # A PINGREQ whose remaining length takes five bytes (0xFF 0xFF 0xFF 0xFF 0x01).
    data = bytes([PINGREQ << 4, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    return run_after_connect(port, version, "remlen", data, [0x81])


def case_invalid_utf8_topic(port, version):
    data = publish_packet(version, b"a/\xff\xfe", b"x", qos=1, packet_id=3)
    return run_after_connect(port, version, "utf8", data, [0x81, 0x82])


def case_invalid_utf8_filter(port, version):
    data = subscribe_packet(version, b"a/\xc0\xaf", qos=1, packet_id=3)
    return run_after_connect(port, version, "utf8f", data, [0x81, 0x82])


def case_wildcard_plus(port, version):
    data = publish_packet(version, "a/+", b"x", qos=1, packet_id=4)
    return run_after_connect(port, version, "wildplus", data, [0x90])


def case_wildcard_hash(port, version):
    data = publish_packet(version, "a/#", b"x", qos=0)
    return run_after_connect(port, version, "wildhash", data, [0x90])


def case_qos3(port, version):
    data = publish_packet(version, "a/b", b"x", qos=1, packet_id=5, flags=0x06)
    return run_after_connect(port, version, "qos3", data, [0x81])


def case_second_connect(port, version):
    data = connect_packet(version, "bad-second")
    return run_after_connect(port, version, "second", data, [0x82])


def case_oversize(port, version):
    data = publish_packet(version, "big/t", b"B" * 4096, qos=1, packet_id=6)
    return run_after_connect(port, version, "big", data, [0x95])


def case_keep_alive(port, version):
    c = Raw(port)
    try:
        c.send(connect_packet(version, "bad-ka-" + vname(version), keep_alive=1))
        t, _, body = c.read_packet()
        if t != CONNACK or body[1] != 0:
            return "CONNACK 0x00", describe(t, 0, body), False
        start = time.time()
        seen, raw, state, _ = observe(c, timeout=6)
        secs = time.time() - start
    finally:
        c.close()
    expected, check = expect_for(version, [0x8D])
    # §3.1.2.10 / §3.1.2.10: one and a half times the keep alive; allow timer slack.
    ok = check(seen, raw, state) and 1.3 <= secs <= 2.5
    return expected + " after ~1.5s", fmt(seen, state, secs), ok


class IdleProbe:
    """A TCP connection that never sends CONNECT; records when the server closes it."""

    def __init__(self, port):
        self.conn = Raw(port)
        self.start = time.time()
        self.result = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        seen, raw, state, secs = observe(self.conn, timeout=CONNECT_TIMEOUT_S + 8)
        self.result = (seen, raw, state, secs)
        self.conn.close()

    def outcome(self):
        self.thread.join(CONNECT_TIMEOUT_S + 10)
        if self.result is None:
            return "close after %ds" % CONNECT_TIMEOUT_S, "probe did not finish", False
        seen, raw, state, secs = self.result
        ok = state == "closed" and not raw and CONNECT_TIMEOUT_S - 1 <= secs <= CONNECT_TIMEOUT_S + 3
        return ("close (no packet) after ~%ds" % CONNECT_TIMEOUT_S), fmt(seen, state, secs), ok


def main():
    bin_dir = sys.argv[1]
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    herald = Herald(bin_dir, "badinput",
                    ["--mqtt.max_packet_size=1KiB", "--storage.sync=false"])
    port = herald.mqtt_port
    cases = []
    for v in (V5, V311):
        n = vname(v)
        cases += [
            ("%s wrong protocol name MQTX" % n, lambda v=v: case_wrong_protocol_name(port, v)),
            ("%s CONNECT protocol level 6" % n, lambda v=v: case_protocol_level_6(port, v)),
            ("%s SUBSCRIBE fixed-header flags 0" % n, lambda v=v: case_subscribe_flags_0(port, v)),
            ("%s PUBREL fixed-header flags 0" % n, lambda v=v: case_pubrel_flags_0(port, v)),
            ("%s remaining length in 5 bytes" % n,
             lambda v=v: case_remaining_length_5_bytes(port, v)),
            ("%s invalid UTF-8 in PUBLISH topic" % n, lambda v=v: case_invalid_utf8_topic(port, v)),
            ("%s invalid UTF-8 in SUBSCRIBE filter" % n,
             lambda v=v: case_invalid_utf8_filter(port, v)),
            ("%s PUBLISH topic 'a/+'" % n, lambda v=v: case_wildcard_plus(port, v)),
            ("%s PUBLISH topic 'a/#'" % n, lambda v=v: case_wildcard_hash(port, v)),
            ("%s PUBLISH QoS 3" % n, lambda v=v: case_qos3(port, v)),
            ("%s second CONNECT" % n, lambda v=v: case_second_connect(port, v)),
            ("%s 4KiB PUBLISH over 1KiB max" % n, lambda v=v: case_oversize(port, v)),
            ("%s keep-alive 1s then silence" % n, lambda v=v: case_keep_alive(port, v)),
        ]
    rows = []
    passed = failed = 0
    try:
        qos1_round_trip(port)  # the broker serves before anything
        idle = IdleProbe(port)  # runs alongside the other cases
        pending = [("TCP connect, no CONNECT (connect timeout)", idle.outcome)]
        for name, fn in cases + pending:
            try:
                expected, observed, ok = fn()
            except Exception as e:  # report every case
                expected, observed, ok = "-", "error: %s: %s" % (type(e).__name__, e), False
            health = "ok"
            try:
                qos1_round_trip(port)
            except Exception as e:
                health = "FAILED (%s)" % e
                ok = False
            rows.append((name, expected, observed, health, ok))
            print("%s %s\n     expected: %s\n     observed: %s\n     next client QoS 1 round "
                  "trip: %s" % ("ok  " if ok else "FAIL", name, expected, observed, health),
                  flush=True)
            if ok:
                passed += 1
            else:
                failed += 1
    finally:
        herald.stop()
    w = max(len(r[0]) for r in rows) if rows else 10
    print("\n%-*s | %-4s | %s" % (w, "case", "ok", "observed"))
    print("-" * (w + 60))
    for name, expected, observed, health, ok in rows:
        print("%-*s | %-4s | %s" % (w, name, "ok" if ok else "FAIL", observed))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
