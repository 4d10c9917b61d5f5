#!/usr/bin/python3
"""Interop: unacknowledged PUBLISH packets are resent when a session resumes (MQTT-4.4.0-1), a
retained message sent on subscribe included, against a real `herald` over raw TCP sockets.

For MQTT 3.1.1 and 5.0: a retained QoS 1 message exists; a persistent session subscribes, gets it
(RETAIN 1), does not acknowledge it and drops the connection. On reconnection (session present)
the same message comes again with DUP 1, RETAIN 1 and its packet identifier; once acknowledged it
is not sent again on the next reconnection. A live QoS 1 message left unacknowledged the same way
comes again too (RETAIN 0). With 5.0, a reconnection with Receive Maximum 1 that drops before
the second resend must not lose it; and retained messages still queued behind Receive Maximum 1
when the connection drops (never sent) come on reconnection as first deliveries (DUP 0,
RETAIN 1), after the unacknowledged one is resent.

usage: mqtt_redelivery_test.py BIN_DIR
"""
import signal
import socket
import struct
import sys
import time

from herald_process import Herald
from mqtt_bad_input_test import (CONNACK, CONNECT, PUBACK, PUBLISH, SUBACK, V311, V5, Closed,
                                 Raw, _exit_on_sigterm, describe, mqtt_str, packet,
                                 publish_packet, puback_packet, subscribe_packet, varint)


def persistent_connect(port, version, client_id, receive_maximum=0):
    """Connects with Clean Start 0 (5.0: Session Expiry Interval 300 s, and Receive Maximum if
    given); returns (conn, session_present)."""
    c = Raw(port)
    c.version = version
    vh = mqtt_str(b"MQTT") + bytes([version, 0x00]) + struct.pack("!H", 30)
    if version == V5:
        props = bytes([0x11]) + struct.pack("!I", 300)  # Session Expiry Interval
        if receive_maximum:
            props += bytes([0x21]) + struct.pack("!H", receive_maximum)
        vh += varint(len(props)) + props
    c.send(packet(CONNECT, 0, vh + mqtt_str(client_id)))
    t, _, body = c.read_packet()
    if t != CONNACK or body[1] != 0:
        raise AssertionError("CONNACK expected, got %s" % describe(t, 0, body))
    return c, bool(body[0] & 1)


def reconnect(sub, port, version, client_id, receive_maximum=0):
    """Drops `sub` (nothing acknowledged), waits for the edge to write the session's in-flight
    state to the core, and connects again; the session must be present."""
    sub.close()
    time.sleep(1.0)
    sub, present = persistent_connect(port, version, client_id, receive_maximum)
    expect(present, "session not present on reconnection")
    return sub


def parse_publish(version, flags, body):
    """(topic, packet_id, payload, dup, retain, qos)."""
    n = struct.unpack("!H", body[:2])[0]
    topic = body[2:2 + n].decode()
    i = 2 + n
    qos = (flags >> 1) & 3
    pid = 0
    if qos:
        pid = struct.unpack("!H", body[i:i + 2])[0]
        i += 2
    if version == V5:
        plen = 0
        mult = 1
        while True:
            b = body[i]
            i += 1
            plen += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        i += plen
    return topic, pid, body[i:], bool(flags & 0x08), bool(flags & 0x01), qos


def next_publish(c, timeout=5.0):
    """The next PUBLISH (other packets skipped); None on silence."""
    deadline = time.time() + timeout
    while True:
        try:
            t, flags, body = c.read_packet(max(0.05, deadline - time.time()))
        except socket.timeout:
            return None
        if t == PUBLISH:
            return parse_publish(c.version, flags, body)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def run(port, version):
    tag = "v5" if version == V5 else "v311"
    topic = "redo/%s/kept" % tag
    client_id = "redelivery-" + tag

    pub = Raw(port)
    pub.version = version
    pub.send(packet(CONNECT, 0, mqtt_str(b"MQTT") + bytes([version, 0x02]) +
                    struct.pack("!H", 30) + (varint(0) if version == V5 else b"") +
                    mqtt_str("pub-" + tag)))
    expect(pub.read_packet()[0] == CONNACK, "publisher: no CONNACK")
    # QoS 1 (0x02) + RETAIN (0x01).
    pub.send(publish_packet(version, topic, b"kept", qos=1, packet_id=1, flags=0x03))
    expect(pub.read_packet()[0] == PUBACK, "publisher: no PUBACK")

    sub, present = persistent_connect(port, version, client_id)
    sub.send(subscribe_packet(version, "redo/%s/+" % tag, qos=1, packet_id=1))
    got = None
    deadline = time.time() + 5
    while got is None and time.time() < deadline:
        t, flags, body = sub.read_packet()
        if t == PUBLISH:
            got = parse_publish(version, flags, body)
        else:
            expect(t == SUBACK, "SUBACK expected, got %s" % describe(t, flags, body))
    expect(got is not None, "the retained message never came")
    r_topic, r_pid, r_payload, r_dup, r_retain, r_qos = got
    expect((r_topic, r_payload, r_retain, r_qos, r_dup) == (topic, b"kept", True, 1, False),
           "first copy: %r" % (got,))
    # A live QoS 1 message, also left unacknowledged.
    pub.send(publish_packet(version, "redo/%s/live" % tag, b"live", qos=1, packet_id=2))
    expect(pub.read_packet()[0] == PUBACK, "publisher: no PUBACK for the live message")
    live = next_publish(sub)
    expect(live is not None and live[2] == b"live" and not live[4], "live copy: %r" % (live,))
    # No PUBACK for either.
    if version == V5:
        # Receive Maximum 1: one message is resent, the other still waits when the connection
        # drops again; neither may be forgotten.
        sub = reconnect(sub, port, version, client_id, receive_maximum=1)
        first = next_publish(sub)
        expect(first is not None, "nothing resent with Receive Maximum 1")
        expect(next_publish(sub, timeout=1.0) is None, "Receive Maximum 1 exceeded")

    sub = reconnect(sub, port, version, client_id)
    again = {}
    while len(again) < 2:
        p = next_publish(sub)
        expect(p is not None, "not resent after reconnection (got %r)" % (again,))
        again[p[2]] = p
    k = again.get(b"kept")
    expect(k is not None and k[1] == r_pid and k[3] and k[4] and k[5] == 1,
           "retained message resent as %r (want packet id %d, DUP 1, RETAIN 1, QoS 1)" %
           (k, r_pid))
    lv = again.get(b"live")
    expect(lv is not None and lv[1] == live[1] and lv[3] and not lv[4],
           "live message resent as %r (want packet id %d, DUP 1, RETAIN 0)" % (lv, live[1]))
    for p in again.values():
        sub.send(puback_packet(p[1]))
    time.sleep(0.5)
    sub = reconnect(sub, port, version, client_id)
    extra = next_publish(sub, timeout=1.5)
    expect(extra is None, "acknowledged message sent again: %r" % (extra,))
    sub.close()
    pub.close()


def run_queued(port):
    """5.0: three retained QoS 1 messages for a subscription of a session with Receive Maximum
    1; only the first is sent before the connection drops, none acknowledged."""
    version = V5
    pub = Raw(port)
    pub.version = version
    pub.send(packet(CONNECT, 0, mqtt_str(b"MQTT") + bytes([version, 0x02]) +
                    struct.pack("!H", 30) + varint(0) + mqtt_str("pub-queued")))
    expect(pub.read_packet()[0] == CONNACK, "publisher: no CONNACK")
    names = [b"q1", b"q2", b"q3"]
    for i, name in enumerate(names):
        pub.send(publish_packet(version, "queued/v5/" + name.decode(), name, qos=1,
                                packet_id=i + 1, flags=0x03))
        expect(pub.read_packet()[0] == PUBACK, "publisher: no PUBACK")
    pub.close()

    client_id = "redelivery-queued"
    sub, _ = persistent_connect(port, version, client_id, receive_maximum=1)
    sub.send(subscribe_packet(version, "queued/v5/+", qos=1, packet_id=1))
    first = next_publish(sub)
    expect(first is not None and first[4] and not first[3], "first retained copy: %r" % (first,))
    expect(next_publish(sub, timeout=1.0) is None, "Receive Maximum 1 exceeded")
    # Subscribing again (Retain Handling 0) queues the same retained messages once more: the
    # session still owes each of them once.
    sub.send(subscribe_packet(version, "queued/v5/+", qos=1, packet_id=2))
    expect(next_publish(sub, timeout=1.0) is None, "Receive Maximum 1 exceeded")

    sub = reconnect(sub, port, version, client_id)
    got = {}
    while len(got) < 3:
        p = next_publish(sub)
        expect(p is not None, "retained messages lost: got only %r" % sorted(got))
        if not got:
            expect(p[2] == first[2], "%r came before the resend of %r" % (p[2], first[2]))
        expect(p[2] not in got, "%r delivered twice" % p[2])
        got[p[2]] = p
        sub.send(puback_packet(p[1]))
    expect(sorted(got) == names, "got %r" % sorted(got))
    again = got[first[2]]
    expect(again[1] == first[1] and again[3] and again[4],
           "unacknowledged one resent as %r (want packet id %d, DUP 1, RETAIN 1)" %
           (again, first[1]))
    for name in names:
        if name == first[2]:
            continue
        q = got[name]
        expect(not q[3] and q[4] and q[5] == 1,
               "queued one delivered as %r (want DUP 0, RETAIN 1, QoS 1)" % (q,))
    ids = [p[1] for p in got.values()]
    expect(len(set(ids)) == 3, "packet ids reused: %r" % ids)
    dup = next_publish(sub, timeout=1.0)
    expect(dup is None, "retained message owed twice: %r" % (dup,))
    sub = reconnect(sub, port, version, client_id)
    extra = next_publish(sub, timeout=1.5)
    expect(extra is None, "acknowledged message sent again: %r" % (extra,))
    sub.close()


def main():
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    herald = Herald(sys.argv[1], "redelivery")
    failed = 0
    try:
        for version in (V311, V5):
            name = "5.0" if version == V5 else "3.1.1"
            try:
                run(herald.mqtt_port, version)
                print("MQTT %s: unacknowledged retained and live messages resent: ok" % name)
            except (AssertionError, Closed, socket.timeout, OSError) as e:
                failed += 1
                print("MQTT %s: FAILED: %s" % (name, e))
        try:
            run_queued(herald.mqtt_port)
            print("MQTT 5.0: retained messages queued behind Receive Maximum kept: ok")
        except (AssertionError, Closed, socket.timeout, OSError) as e:
            failed += 1
            print("MQTT 5.0 (queued retained): FAILED: %s" % e)
    finally:
        herald.stop()
    if failed:
        print("--- herald log (tail) ---")
        print("".join(herald.log[-40:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
