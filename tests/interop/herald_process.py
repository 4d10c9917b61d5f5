"""An all-in-one `herald` process for the Python interop tests.

Every listener is given port 0 and the ports herald got are read from its log ("mqtt listening
on ...", "mqtt (TLS) listening on ..."): a port picked by the test and released could be taken
by herald's own core listener first. The process gets SIGKILL if the test process dies (even by
SIGKILL, e.g. a ctest timeout), so no herald outlives its test.
"""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

_MQTT = re.compile(r"mqtt listening on 127\.0\.0\.1:(\d+)")
_MQTT_TLS = re.compile(r"mqtt \(TLS\) listening on 127\.0\.0\.1:(\d+)")


def _die_with_parent():
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Herald:
    """Starts herald with `extra_args` (after the listeners and data directory) and waits for
    "herald ready". `tls` says whether an MQTT TLS listener is expected (its port: tls_port)."""

    def __init__(self, bin_dir, name, extra_args=(), tls=False, data_dir=None):
        self.own_dir = data_dir is None
        self.dir = tempfile.mkdtemp(prefix="herald-%s-" % name) if self.own_dir else data_dir
        self.mqtt_port = 0
        self.tls_port = 0
        self.log = []
        args = [os.path.join(bin_dir, "herald"), "--data_dir=" + os.path.join(self.dir, "data"),
                "--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                "--http.listen=127.0.0.1:0", "--mqtt.listen=127.0.0.1:0"]
        if tls:
            args.append("--mqtt.tls_listen=127.0.0.1:0")
        self.proc = subprocess.Popen(args + list(extra_args), stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = _MQTT.search(line)
            if m:
                self.mqtt_port = int(m.group(1))
            m = _MQTT_TLS.search(line)
            if m:
                self.tls_port = int(m.group(1))
            if line.rstrip().endswith("herald ready") and self.mqtt_port and (
                    self.tls_port or not tls):
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("herald did not become ready:\n" + "".join(self.log[-20:]))

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
