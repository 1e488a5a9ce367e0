#!/usr/bin/env bash
# What watching the server costs it: the same relay run with nobody watching, and with
# /metrics scraped every second and the admin dashboard's live feed open, alternated in one
# session (docs/BENCHMARKS.md, "Operations"). The server is pinned to SERVER_CPU, the
# generator, the scraper and the feed's reader to CLIENT_CPU; each run is a fresh server.
#
#   scripts/bench-ops.sh                 # 3 pairs, 1,000 clients at 10 msg/s, 20 s each
#   REPEAT=5 DURATION=30 scripts/bench-ops.sh
#
# Prints one line per run: mode, server CPU seconds, deliveries, CPU per delivery (us),
# p50/p99/p99.9 (us); the loadgen JSON of each run is kept in OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-10}
PORT=${PORT:-7711}
OUT=${OUT:-$ROOT/target/bench-ops/$(date +%Y%m%d-%H%M%S)}
TOKEN=bench-ops-admin-token-0123456789
CORELAY=$ROOT/target/release/corelay
LOADGEN=$ROOT/target/release/corelay-loadgen
PY=$ROOT/tests/interop/.venv/bin/python

mkdir -p "$OUT"
[ -x "$CORELAY" ] && [ -x "$LOADGEN" ] || {
	echo "build first: cargo build --release -p corelay -p corelay-loadgen" >&2
	exit 2
}

# The watchers: a scrape a second, and the dashboard's feed read as it comes.
watch() {
	local seconds=$1
	taskset -c "$CLIENT_CPU" "$PY" - "$PORT" "$TOKEN" "$seconds" <<'EOF' &
import sys, time, threading, urllib.request, websocket
port, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + seconds
def feed():
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/admin/feed",
                                     header=[f"Authorization: Bearer {token}"], timeout=5)
    ws.send('{"rooms": {"search": "", "page": 0}}')
    while time.time() < end:
        try:
            ws.recv()
        except websocket.WebSocketTimeoutException:
            pass
threading.Thread(target=feed, daemon=True).start()
while time.time() < end:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    time.sleep(1)
EOF
	echo $!
}

run() {
	local mode=$1 i=$2
	CORELAY_ADMIN_TOKEN=$TOKEN taskset -c "$SERVER_CPU" "$CORELAY" serve \
		--listen "127.0.0.1:$PORT" --shards 1 >"$OUT/server-$mode-$i.log" 2>&1 &
	local server=$!
	for _ in $(seq 100); do
		curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
		sleep 0.1
	done
	local watcher=""
	if [ "$mode" = watched ]; then
		watcher=$(watch $((DURATION + WARMUP + 5)))
	fi
	taskset -c "$CLIENT_CPU" "$LOADGEN" relay --url "ws://127.0.0.1:$PORT/ws" \
		--clients "$CLIENTS" --room-size 10 --rate "$RATE" --duration "$DURATION" \
		--warmup "$WARMUP" --cpus "$CLIENT_CPU" --spin-us 100000 --server-pid "$server" \
		--json "$OUT/$mode-$i.json" -q >"$OUT/$mode-$i.txt" 2>&1 || true
	[ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
	kill -TERM "$server"
	wait "$server" 2>/dev/null || true
	"$PY" - "$OUT/$mode-$i.json" "$mode" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s, m, l = r["server"], r["messages"], r["latency"]
per = s["cpu_s"] / m["delivered"] * 1e6 if m["delivered"] else float("nan")
print(f"{sys.argv[2]:8} server_cpu_s={s['cpu_s']:.2f} delivered={m['delivered']} lost={m['lost']} "
      f"cpu_per_delivery_us={per:.3f} p50={l['p50_us']} p99={l['p99_us']} "
      f"p99.9={l['p999_us']} generator_util={r['generator']['utilization']:.2f}")
EOF
}

echo "runs in $OUT"
for i in $(seq "$REPEAT"); do
	run plain "$i"
	run watched "$i"
done
