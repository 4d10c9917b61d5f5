#!/usr/bin/env bash
# Publish throughput and acknowledgement latency of the core, replication factor 1 and 3, with and
# without batching, on this machine (fsync on). Prints one line per run. Then replication 3 with
# 12 partitions (4 led by each node instead of 3/3/2), with one request per publisher (Publish
# calls), the same over PublishStream (--client=stream: one stream per server shared by the
# publishers), and with the publishers sharing an edge's client (--client=edge: requests
# coalesced per partition).
#
#   tests/bench/core_publish.sh [DURATION]      (default 10s per run; needs a build: tools/dev build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION="${1:-10s}"
BIN=build/bin
ROOT=$(mktemp -d /tmp/herald-bench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$ROOT"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

start_cluster() {  # N [PARTITIONS]
  local n=$1 partitions=${2:-8} peers="" ports=() i
  for ((i = 1; i <= n; i++)); do ports+=("$(free_port)"); done
  for ((i = 1; i <= n; i++)); do peers+="${peers:+,}$i=127.0.0.1:${ports[$((i - 1))]}"; done
  SERVERS=""
  for ((i = 1; i <= n; i++)); do
    "$BIN/herald-core" --core.node_id=$i --core.listen=127.0.0.1:${ports[$((i - 1))]} \
      --cluster.peers="$peers" --cluster.partitions=$partitions --admin.listen=127.0.0.1:0 \
      --data_dir="$ROOT/rf$n-p$partitions-node$i" --log.level=warn &
    PIDS+=($!)
    SERVERS+="${SERVERS:+,}127.0.0.1:${ports[$((i - 1))]}"
  done
  sleep 3  # elections
}

stop_cluster() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

for n in 1 3; do
  start_cluster "$n"
  # stream:10 right after grpc:10: the 50-message run leaves the cluster flushing and compacting.
  for run in grpc:1 grpc:10 stream:10 grpc:50; do
    client=${run%:*} batch=${run#*:}
    echo "== replication factor $n, batch $batch, client $client" >&2
    "$BIN/herald-bench" publish --servers="$SERVERS" --partitions=8 --publishers=50 \
      --batch=$batch --payload=100 --duration="$DURATION" --client=$client | sed "s/^/RF=$n /"
  done
  stop_cluster
done

start_cluster 3 12
for client in grpc stream edge; do
  echo "== replication factor 3, 12 partitions, batch 10, client $client" >&2
  "$BIN/herald-bench" publish --servers="$SERVERS" --partitions=12 --publishers=50 \
    --batch=10 --payload=100 --duration="$DURATION" --client=$client | sed "s/^/RF=3 P=12 /"
done
stop_cluster
