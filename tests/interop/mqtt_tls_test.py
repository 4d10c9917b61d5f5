#!/usr/bin/python3
"""Interop: MQTT over TLS (mqtt.tls_listen with tls.cert_file/tls.key_file) against a real
`herald`, with the paho-mqtt Python client (Debian python3-paho-mqtt) and mosquitto_sub.

Makes a CA and a server certificate for 127.0.0.1/localhost with the openssl command line,
starts herald with them, and checks: a paho client that verifies the server (CA, hostname) does a
QoS 1 round trip over TLS for 3.1.1 and 5.0; mosquitto_sub over TLS receives a retained message;
a client that does not trust the CA fails the handshake; the plain TCP listener keeps working.
Prints "N passed, N failed".

usage: mqtt_tls_test.py BIN_DIR
"""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

import paho.mqtt.client as mqtt

from herald_process import Herald


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """CA, server cert (SAN localhost and 127.0.0.1), and a second CA nobody uses."""
    for ca in ("ca", "other-ca"):
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=herald test %s" % ca, "-keyout", os.path.join(d, ca + ".key"),
            "-out", os.path.join(d, ca + ".pem"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", os.path.join(d, "server.key"), "-out", os.path.join(d, "server.csr"))
    run("openssl", "x509", "-req", "-in", os.path.join(d, "server.csr"), "-days", "2",
        "-CA", os.path.join(d, "ca.pem"), "-CAkey", os.path.join(d, "ca.key"),
        "-CAcreateserial", "-extfile", ext, "-out", os.path.join(d, "server.pem"))



def connect(client, port, ca=None):
    done = threading.Event()
    result = {}
    client.on_connect = lambda c, u, f, rc, p=None: (result.setdefault("rc", rc), done.set())
    if ca is not None:
        client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not done.wait(10):
        raise AssertionError("no CONNACK on port %d" % port)
    if result["rc"] != 0:
        raise AssertionError("CONNACK refused: %s" % result["rc"])


def round_trip(herald, version, tag):
    ca = os.path.join(herald.dir, "ca.pem")
    got = []
    arrived = threading.Event()
    sub = mqtt.Client(client_id="tls-sub-" + tag, protocol=version)
    sub.on_message = lambda c, u, m: (got.append(m.payload.decode()), arrived.set())
    connect(sub, herald.tls_port, ca)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe("tls/" + tag, qos=1)
    if not subscribed.wait(10):
        raise AssertionError("no SUBACK over TLS")
    pub = mqtt.Client(client_id="tls-pub-" + tag, protocol=version)
    connect(pub, herald.tls_port, ca)
    pub.publish("tls/" + tag, "secret " + tag, qos=1).wait_for_publish(10)
    if not arrived.wait(10):
        raise AssertionError("message not delivered over TLS")
    if got != ["secret " + tag]:
        raise AssertionError("got %r" % got)
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def case_paho_v311(h):
    round_trip(h, mqtt.MQTTv311, "v311")


def case_paho_v5(h):
    round_trip(h, mqtt.MQTTv5, "v5")


def case_mosquitto_sub_gets_retained_over_tls(h):
    pub = mqtt.Client(client_id="tls-retainer", protocol=mqtt.MQTTv311)
    connect(pub, h.mqtt_port)  # the plain listener keeps working next to the TLS one
    pub.publish("tls/retained", "kept", qos=1, retain=True).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    out = subprocess.run(
        ["mosquitto_sub", "-h", "localhost", "-p", str(h.tls_port), "--cafile",
         os.path.join(h.dir, "ca.pem"), "-t", "tls/retained", "-C", "1", "-W", "10"],
        capture_output=True, text=True, timeout=20)
    if out.stdout.strip() != "kept":
        raise AssertionError("mosquitto_sub over TLS: rc %d, out %r, err %r" %
                             (out.returncode, out.stdout, out.stderr))


def case_untrusted_client_fails_handshake(h):
    ctx = ssl.create_default_context(cafile=os.path.join(h.dir, "other-ca.pem"))
    with socket.create_connection(("127.0.0.1", h.tls_port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                raise AssertionError("handshake succeeded against an untrusted CA")
        except ssl.SSLCertVerificationError:
            pass


def main():
    bin_dir = sys.argv[1]
    d = tempfile.mkdtemp(prefix="herald-mqtt-tls-")
    herald = None
    passed = failed = 0
    try:
        make_certs(d)
        herald = Herald(bin_dir, "tls", ["--storage.sync=false",
                                         "--tls.cert_file=" + os.path.join(d, "server.pem"),
                                         "--tls.key_file=" + os.path.join(d, "server.key")],
                        tls=True, data_dir=d)
        for case in (case_paho_v311, case_paho_v5, case_mosquitto_sub_gets_retained_over_tls,
                     case_untrusted_client_fails_handshake):
            try:
                case(herald)
                print("ok   " + case.__name__, flush=True)
                passed += 1
            except Exception as e:
                print("FAIL %s: %s" % (case.__name__, e), flush=True)
                failed += 1
    finally:
        if herald is not None:
            herald.stop()
        shutil.rmtree(d, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
