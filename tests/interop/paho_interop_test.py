#!/usr/bin/python3
"""Interop: the paho-mqtt Python client (Debian python3-paho-mqtt) against a real `herald`.

Starts herald on free loopback ports, then for MQTT 3.1.1 and 5.0 subscribes at QoS 1, publishes
QoS 0 and QoS 1 messages and checks they all arrive once, in order; for 5.0 also that the publish
properties (content type, payload format, response topic, correlation data, user properties in
order with duplicates, message expiry) reach the subscriber. Prints "N passed, N failed".

usage: paho_interop_test.py BIN_DIR
"""
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from herald_process import Herald



def client(version, name):
    c = mqtt.Client(client_id=name, protocol=version)
    return c


def connect(c, port, version):
    done = threading.Event()
    result = {}

    def on_connect(cl, userdata, flags, rc, properties=None):
        result["rc"] = rc
        done.set()

    c.on_connect = on_connect
    if version == mqtt.MQTTv5:
        c.connect("127.0.0.1", port, keepalive=30, clean_start=True)
    else:
        c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not done.wait(10):
        raise AssertionError("no CONNACK")
    if result["rc"] != 0:
        raise AssertionError("CONNACK refused: %s" % result["rc"])


def subscribe(c, topic, qos, version):
    done = threading.Event()
    c.on_subscribe = lambda *args: done.set()
    c.subscribe(topic, qos=qos)
    if not done.wait(10):
        raise AssertionError("no SUBACK")


def check_order(version, port, n=40):
    name = "v5" if version == mqtt.MQTTv5 else "v311"
    got = queue.Queue()
    sub = client(version, "paho-sub-" + name)
    sub.on_message = lambda cl, ud, msg: got.put(msg)
    connect(sub, port, version)
    topic = "paho/%s/t" % name
    subscribe(sub, "paho/%s/#" % name, 1, version)
    pub = client(version, "paho-pub-" + name)
    connect(pub, port, version)
    infos = []
    for i in range(n):
        infos.append(pub.publish(topic, "m-%d" % i, qos=i % 2))
    for info in infos:
        info.wait_for_publish(10)
    payloads = []
    deadline = time.time() + 15
    while len(payloads) < n and time.time() < deadline:
        try:
            payloads.append(got.get(timeout=1).payload.decode())
        except queue.Empty:
            pass
    time.sleep(0.3)  # a duplicate would arrive now
    while not got.empty():
        payloads.append(got.get().payload.decode())
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    expect = ["m-%d" % i for i in range(n)]
    if payloads != expect:
        raise AssertionError("%s: got %r, expected %r" % (name, payloads[:10], expect[:10]))


def check_v5_properties(port):
    got = queue.Queue()
    sub = client(mqtt.MQTTv5, "paho-props-sub")
    sub.on_message = lambda cl, ud, msg: got.put(msg)
    connect(sub, port, mqtt.MQTTv5)
    subscribe(sub, "props/#", 1, mqtt.MQTTv5)
    pub = client(mqtt.MQTTv5, "paho-props-pub")
    connect(pub, port, mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    props.ResponseTopic = "props/reply"
    props.CorrelationData = b"\x01\x02corr"
    props.MessageExpiryInterval = 3600
    props.UserProperty = [("k", "1"), ("k", "2"), ("other", "x")]
    pub.publish("props/a", '{"v":1}', qos=1, properties=props).wait_for_publish(10)
    msg = got.get(timeout=10)
    p = msg.properties
    checks = [
        (msg.payload, b'{"v":1}'),
        (getattr(p, "ContentType", None), "application/json"),
        (getattr(p, "PayloadFormatIndicator", None), 1),
        (getattr(p, "ResponseTopic", None), "props/reply"),
        (getattr(p, "CorrelationData", None), b"\x01\x02corr"),
        (getattr(p, "UserProperty", None), [("k", "1"), ("k", "2"), ("other", "x")]),
    ]
    for actual, expect in checks:
        if actual != expect:
            raise AssertionError("property: got %r, expected %r" % (actual, expect))
    expiry = getattr(p, "MessageExpiryInterval", None)
    if expiry is None or not 3590 <= expiry <= 3600:
        raise AssertionError("message expiry interval: got %r" % (expiry,))
    pub.loop_stop()
    sub.loop_stop()


def main():
    bin_dir = sys.argv[1]
    herald = Herald(bin_dir, "paho")
    tests = [
        ("MQTT 3.1.1 QoS 0/1 in order", lambda: check_order(mqtt.MQTTv311, herald.mqtt_port)),
        ("MQTT 5.0 QoS 0/1 in order", lambda: check_order(mqtt.MQTTv5, herald.mqtt_port)),
        ("MQTT 5.0 publish properties", lambda: check_v5_properties(herald.mqtt_port)),
    ]
    passed = failed = 0
    try:
        for name, fn in tests:
            try:
                fn()
                print("ok   " + name)
                passed += 1
            except Exception as e:  # report every case
                print("FAIL %s: %s" % (name, e))
                failed += 1
    finally:
        herald.stop()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
