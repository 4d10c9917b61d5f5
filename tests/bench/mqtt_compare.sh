#!/usr/bin/env bash
# Herald's MQTT edge against Debian's mosquitto, same machine, same load generator
# (herald-bench mqtt). Each workload runs against a fresh broker process, one broker at a time:
#   (a) 100 publishers -> 100 subscribers, one topic each (T=100), QoS 0
#   (b) 1 publisher -> 1,000 subscribers of one topic (T=1), QoS 0
#   (c) 50 publishers -> 50 subscribers (T=50), QoS 1
#   (d) 10,000 idle connections: broker resident memory per connection
# and prints a table with the ratio Herald / mosquitto.
#
#   tests/bench/mqtt_compare.sh [SECONDS]      (default 10 per workload; needs a build and
#                                               mosquitto: tools/dev setup && tools/dev build)
#
# Environment: HERALD_BIN_DIR (default build/bin: herald and herald-bench), RATE (messages/s per
# publisher, default 0 = as fast as flow control allows), SIZE (payload bytes, default 100),
# VERSION (4 or 5, default 4), HERALD_ARGS (extra flags for herald, e.g. --storage.sync=false),
# KEEP_LOGS=1 keeps the temporary directory with the brokers' logs and the bench outputs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION="${1:-10}"
BIN="${HERALD_BIN_DIR:-build/bin}"
RATE="${RATE:-0}"
SIZE="${SIZE:-100}"
VERSION="${VERSION:-4}"
read -r -a EXTRA_HERALD_ARGS <<<"${HERALD_ARGS:-}"

MOSQUITTO=$(command -v mosquitto || true)
[[ -z "$MOSQUITTO" && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z "$MOSQUITTO" ]]; then
  echo "mqtt_compare: mosquitto is not installed; run tools/dev setup" >&2
  exit 1
fi
for b in herald herald-bench; do
  if [[ ! -x "$BIN/$b" ]]; then
    echo "mqtt_compare: $BIN/$b not found; run tools/dev build (or set HERALD_BIN_DIR)" >&2
    exit 1
  fi
done

ROOT=$(mktemp -d /tmp/herald-mqtt-compare-XXXXXX)
BROKER_PID=""
cleanup() {
  if [[ -n "$BROKER_PID" ]]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  if [[ "${KEEP_LOGS:-0}" == 1 ]]; then
    echo "mqtt_compare: logs kept in $ROOT" >&2
  else
    rm -rf "$ROOT"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_port() {  # PORT: until something accepts on 127.0.0.1:PORT (30 s at most)
  local i
  for ((i = 0; i < 300; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "mqtt_compare: broker did not start; log:" >&2
  tail -20 "$ROOT"/*.log >&2 || true
  exit 1
}

# Each broker runs in a subshell with its own file-descriptor budget; `exec` makes BROKER_PID
# the broker itself, so its /proc/PID/status is the broker's memory.
# Listeners other than MQTT, admin and core are turned off, when this build has them.
HERALD_OFF=()
for opt in http.listen; do
  if "$BIN/herald" --help-config 2>/dev/null | grep -q "\`--$opt\`"; then HERALD_OFF+=("--$opt="); fi
done

start_herald() {  # NAME
  local admin core
  PORT=$(free_port)
  admin=$(free_port)
  core=$(free_port)
  (
    ulimit -n 20000
    exec "$BIN/herald" --data_dir="$ROOT/herald-$1" --mqtt.listen="127.0.0.1:$PORT" \
      --core.listen="127.0.0.1:$core" --admin.listen="127.0.0.1:$admin" --log.level=warn \
      "${HERALD_OFF[@]}" "${EXTRA_HERALD_ARGS[@]}"
  ) >"$ROOT/herald-$1.log" 2>&1 &
  BROKER_PID=$!
  wait_port "$PORT"
  # Serve MQTT only once the core's partitions have leaders.
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "mqtt_compare: herald not ready after 30 s" >&2
  exit 1
}

start_mosquitto() {  # NAME
  PORT=$(free_port)
  cat >"$ROOT/mosquitto-$1.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 1000000
max_inflight_messages 64
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
  (
    ulimit -n 20000
    exec "$MOSQUITTO" -c "$ROOT/mosquitto-$1.conf"
  ) >"$ROOT/mosquitto-$1.log" 2>&1 &
  BROKER_PID=$!
  wait_port "$PORT"
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

run() {  # WORKLOAD BROKER BENCH-FLAGS...
  local name=$1 broker=$2
  shift 2
  echo "== ($name) $broker: $*" >&2
  "start_$broker" "$name"
  (
    ulimit -n 20000
    exec "$BIN/herald-bench" mqtt --host 127.0.0.1 --port "$PORT" --broker-pid "$BROKER_PID" \
      --version "$VERSION" --size "$SIZE" "$@"
  ) | tee "$ROOT/$name-$broker.out" || true
  stop_broker
  grep '^RESULT ' "$ROOT/$name-$broker.out" | sed 's/^RESULT //' >"$ROOT/$name-$broker.json" || true
}

for broker in herald mosquitto; do
  run a "$broker" --publishers 100 --subscribers 100 --topics 100 --qos 0 --rate "$RATE" \
    --duration "$DURATION"
  run b "$broker" --publishers 1 --subscribers 1000 --topics 1 --qos 0 --rate "$RATE" \
    --duration "$DURATION"
  run c "$broker" --publishers 50 --subscribers 50 --topics 50 --qos 1 --rate "$RATE" \
    --duration "$DURATION"
  run d "$broker" --publishers 0 --subscribers 0 --idle-connections 10000 --duration 1 \
    --warmup 0
done

python3 - "$ROOT" "$DURATION" "$RATE" "$SIZE" "$VERSION" <<'EOF'
import json, os, sys
root, duration, rate, size, version = sys.argv[1:]

def load(name, broker):
    try:
        with open(os.path.join(root, f"{name}-{broker}.json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

rows = []
titles = {
    "a": "(a) 100 pub -> 100 sub, T=100, QoS 0",
    "b": "(b) 1 pub -> 1000 sub, T=1, QoS 0",
    "c": "(c) 50 pub -> 50 sub, T=50, QoS 1",
}
for w in "abc":
    for key, label, fmt in [("delivered_per_s", "delivered msg/s", "{:.0f}"),
                            ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
                            ("lost", "lost", "{:.0f}"), ("rss_end", "broker RSS end MiB", None)]:
        h, m = load(w, "herald"), load(w, "mosquitto")
        def val(r):
            if r is None or key not in r:
                return None
            v = float(r[key])
            return v / 1048576 if key == "rss_end" else v
        hv, mv = val(h), val(m)
        f = fmt or "{:.1f}"
        rows.append((titles[w] if label == "delivered msg/s" else "", label,
                     "-" if hv is None else f.format(hv), "-" if mv is None else f.format(mv),
                     "-" if hv is None or mv is None or mv == 0 else f"{hv / mv:.2f}"))
h, m = load("d", "herald"), load("d", "mosquitto")
def idle(r):
    return None if r is None else float(r.get("bytes_per_idle_connection", 0))
hv, mv = idle(h), idle(m)
rows.append(("(d) 10,000 idle connections", "bytes/connection",
             "-" if hv is None else f"{hv:.0f}", "-" if mv is None else f"{mv:.0f}",
             "-" if hv is None or not mv else f"{hv / mv:.2f}"))

print(f"\nMQTT v{'5.0' if version == '5' else '3.1.1'}, payload {size} B, rate "
      f"{'max' if rate in ('0', '0.0') else rate + '/s per publisher'}, {duration} s per workload")
widths = [max(len(r[i]) for r in rows + [("workload", "figure", "herald", "mosquitto",
                                          "herald/mosquitto")]) for i in range(5)]
def line(r):
    return "  ".join(r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in range(5))
print(line(("workload", "figure", "herald", "mosquitto", "herald/mosquitto")))
print(line(tuple("-" * w for w in widths)))
for r in rows:
    print(line(r))
EOF
