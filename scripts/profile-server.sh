#!/usr/bin/env bash
# Where a relay server's CPU goes per delivery: runs one server pinned to one CPU under the
# busy-polling load generator on the other, and over the measured window counts, per
# delivery, the server's syscalls, io_uring_enter calls, send-family syscalls, context
# switches and wake-ups (perf stat), and its user and kernel time (/proc/PID/stat).
#
#   scripts/profile-server.sh corelay            [rate] [seconds]   # target/release/corelay, /ws
#   scripts/profile-server.sh corelay-sio        [rate] [seconds]   # the same, socket.io
#   scripts/profile-server.sh socketioxide       [rate] [seconds]   # loadgen/peers/socketioxide
#   CORELAY_BIN=/path/to/old/corelay scripts/profile-server.sh corelay 10
#
# 1,000 clients in rooms of 10, 64 B payloads (scripts/bench-peers.sh's `rates`). Needs
# perf (linux-perf) and root for the tracepoints. Stops only the processes it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KIND=${1:?usage: profile-server.sh corelay|corelay-sio|socketioxide [rate] [seconds]}
RATE=${2:-10}
SECONDS_MEASURED=${3:-8}
WARMUP=3
SCPU=${SERVER_CPU:-0}
CCPU=${CLIENT_CPU:-1}
PORT=${PORT:-7790}
CORELAY_BIN=${CORELAY_BIN:-$ROOT/target/release/corelay}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/corelay-loadgen}
SIOXIDE=$ROOT/loadgen/peers/socketioxide/target/release/socketioxide-relay

command -v perf >/dev/null || { echo "profile-server: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
work=$(mktemp -d)
SPID=
LPID=
# The generator, then the server, by PID. `|| true`: under set -e a failed kill, or wait
# reporting the signal, must not end the cleanup before the rest.
cleanup() {
	local pid
	for pid in $LPID $SPID; do
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

case $KIND in
corelay | corelay-sio)
	# All 1,000 clients come from 127.0.0.1: the per-address admission limits are lifted,
	# and the per-connection message rates raised past any rate profiled (CORELAY_ENV,
	# after them, may set them again).
	taskset -c "$SCPU" env CORELAY_MAX_CONNECTIONS_PER_IP=1000000 \
		CORELAY_ENGINEIO_MAX_SESSIONS_PER_IP=1000000 CORELAY_ENGINEIO_HANDSHAKE_RATE=1000000 \
		CORELAY_RATE_LIMITS_NATIVE_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_NATIVE_MESSAGES_BURST=100000 \
		CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_BURST=100000 \
		${CORELAY_ENV:-} "$CORELAY_BIN" serve --listen "127.0.0.1:$PORT" \
		--shards 1 --cpus "$SCPU" >"$work/server.log" 2>&1 &
	;;
socketioxide)
	[[ -x $SIOXIDE ]] || cargo build --release --quiet --manifest-path "$ROOT/loadgen/peers/socketioxide/Cargo.toml"
	PORT=$PORT taskset -c "$SCPU" "$SIOXIDE" >"$work/server.log" 2>&1 &
	;;
*) echo "profile-server: unknown server '$KIND'" >&2; exit 2 ;;
esac
SPID=$!
for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
case $KIND in
corelay) args=(--url "ws://127.0.0.1:$PORT/ws") ;;
*) args=(--protocol socketio --url "ws://127.0.0.1:$PORT/socket.io/") ;;
esac

# The load starts after the connections; measure from a second past the warm-up to a
# second before the end.
taskset -c "$CCPU" "$LOADGEN" relay "${args[@]}" --clients 1000 --room-size 10 --rate "$RATE" \
	--payload 64 --duration "$((SECONDS_MEASURED + 2))" --warmup "$WARMUP" --cpus "$CCPU" \
	--spin-us 100000 --server-pid "$SPID" --json "$work/run.json" -q >"$work/loadgen.txt" 2>&1 &
LPID=$!
# Wait (at most a minute) for the 1,000 connections, then for the warm-up.
for _ in $(seq 600); do
	(($(ss -Htn state established "( sport = :$PORT )" | wc -l) >= 1000)) && break
	sleep 0.1
done
sleep "$((WARMUP + 1))"
ticks() { awk '{print $14, $15}' "/proc/$SPID/stat"; }
read -r u0 s0 < <(ticks)
perf stat -x, -o "$work/perf.csv" -p "$SPID" \
	-e task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,sched:sched_wakeup \
	-- sleep "$SECONDS_MEASURED" 2>/dev/null
read -r u1 s1 < <(ticks)
wait "$LPID" || true
LPID=
rate_per_s=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["messages"]["delivered_per_s"]))' \
	"$work/run.json" 2>/dev/null) || rate_per_s=0
((rate_per_s > 0)) || { echo "profile-server: no deliveries in the load generator's report" >&2; cat "$work/loadgen.txt" >&2; exit 1; }
hz=$(getconf CLK_TCK)
awk -F, -v n="$rate_per_s" -v secs="$SECONDS_MEASURED" -v du="$((u1 - u0))" -v ds="$((s1 - s0))" -v hz="$hz" -v kind="$KIND" -v rate="$RATE" '
	$1 ~ /^[0-9.]+$/ { v[$3] = $1 }
	END {
		d = n * secs
		printf "%s at %s msg/s per client: %d deliveries/s, measured %d s\n", kind, rate, n, secs
		printf "  CPU per delivery        %.2f us (user %.2f, kernel %.2f)\n", v["task-clock"] * 1000 / d, du / hz * 1e6 / d, ds / hz * 1e6 / d
		printf "  syscalls per delivery   %.3f\n", v["raw_syscalls:sys_enter"] / d
		printf "    io_uring_enter        %.3f\n", v["syscalls:sys_enter_io_uring_enter"] / d
		printf "    send family           %.3f (sendto %.3f, sendmsg %.3f, write %.3f, writev %.3f)\n", (v["syscalls:sys_enter_sendto"] + v["syscalls:sys_enter_sendmsg"] + v["syscalls:sys_enter_write"] + v["syscalls:sys_enter_writev"]) / d, v["syscalls:sys_enter_sendto"] / d, v["syscalls:sys_enter_sendmsg"] / d, v["syscalls:sys_enter_write"] / d, v["syscalls:sys_enter_writev"] / d
		printf "    recvfrom / read       %.3f / %.3f\n", v["syscalls:sys_enter_recvfrom"] / d, v["syscalls:sys_enter_read"] / d
		printf "    epoll_wait            %.3f\n", v["syscalls:sys_enter_epoll_wait"] / d
		printf "  context switches        %.3f per delivery\n", v["context-switches"] / d
		printf "  wake-ups it caused      %.3f per delivery (of other tasks: the generator)\n", v["sched:sched_wakeup"] / d
	}' "$work/perf.csv"
grep -E "^(intended|pacing)" "$work/loadgen.txt" | sed 's/^/  /'
