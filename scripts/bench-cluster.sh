#!/usr/bin/env bash
# Rooms across nodes: what a cluster of relays costs per delivered message, and where.
# Starts its own redis-server and N nodes sharing it, corelay (`[cluster] redis`, rooms
# across nodes through Redis pub/sub, interest routing) or the Node socket.io reference
# with the official Redis adapter (loadgen/reference, REDIS_URL), and drives them with
# corelay-loadgen across all nodes (`--url a,b,c`) in two spreads:
#
#   members  consecutive members of a room on different nodes: every room spans the
#            nodes, most deliveries cross nodes (through Redis);
#   rooms    every room on one node, rooms round-robin over the nodes: no delivery needs
#            Redis, which a cluster that routes by interest can exploit.
#
#   scripts/bench-cluster.sh                       # corelay and node, 2 nodes, both spreads
#   scripts/bench-cluster.sh --nodes 3 --repeat 3 --duration 20
#   scripts/bench-cluster.sh --servers corelay --rate 10     # corelay alone, 5x the load
#   scripts/bench-cluster.sh --help
#
# Pinning on a 2-core machine: every node and redis-server share one CPU (--node-cpu,
# default 0; --redis-cpu to move Redis), so that the whole cluster's CPU per delivery is
# what one core pays; corelay-loadgen runs on the other (--client-cpu, default 1), busy
# polling (--spin-us 100000) as in bench-peers.sh, and this script pins itself there too,
# so that its sampling (below) never takes the cluster's core. Each run is a fresh Redis
# and fresh nodes; every process it starts is stopped by its PID.
#
# What is measured, per run, over the same span of the measured window: the script reads
# the generator's progress lines (one every --interval), and when the window opens (the
# row at t = warm-up) and one interval before it ends (the row at t = warm-up + duration
# - interval: the generator may stop before its last row) it samples, in the same order:
#   - utime + stime of every node process and of redis-server (/proc/PID/stat);
#   - Redis INFO stats (total_commands_processed, total_net_input_bytes,
#     total_net_output_bytes) and INFO commandstats (calls per command);
#   - each node's TCP connections to the Redis port (`ss -tinp`: bytes_received and
#     bytes_sent per socket, summed by PID): what the node received from Redis and sent
#     to it. Redis 7.0's CLIENT LIST has no per-client byte counts (tot-net-in/out came
#     later), so the node's side of the sockets is read instead;
#   - corelay: each node's /metrics (corelay_cluster_published_total,
#     corelay_cluster_received_total, corelay_cluster_rooms_followed).
# The deliveries between the two rows (the rows' cumulative `delivered`, counted by the
# generator) divide every difference: CPU µs per delivery of each node, of Redis and in
# total, Redis commands and bytes per delivery, bytes each node received from Redis per
# delivery. Latency (same node versus cross node), deliveries/s and loss come from the
# generator's report of the whole window.
#
# Outputs (--out, default target/bench-cluster/<date>): per run <server>-<spread>-r<n>.json
# (the loadgen report), .txt (its table), .progress, .before/.after (the samples),
# .node<i>.log, .redis.log; results.tsv (one row of figures per run), summary.txt (the
# table), env.txt. `--report DIR` prints the table of DIR again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

usage() {
	cat <<'EOF'
usage: scripts/bench-cluster.sh [options]

What to run
  --servers LIST      corelay (native /ws), corelay-sio (corelay's /socket.io/), node
                      (Node socket.io + @socket.io/redis-adapter) (default: corelay,node)
  --nodes N           nodes per cluster, 2 or more (2)
  --spreads LIST      members,rooms (default: both)
  --repeat N          runs of each (server, spread), interleaved (1)
  --clients N         clients, spread over the nodes (1000)
  --room-size N       members per room (10)
  --rate R            messages per second per client (2: 18,000 deliveries/s, which
                      Node's cluster carries on one core)
  --payload B         payload bytes (64; socket.io needs at least 48)
  --duration S        measured seconds (10)
  --warmup S          seconds before the window: connections and subscriptions settle (3)
  --drain S           longest wait for in-flight messages after the last send (2)
  --interval S        seconds between the generator's progress rows, which time the
                      samples (0.5)

Where
  --node-cpu N        CPU of every node (0)
  --redis-cpu N       CPU of redis-server (the nodes' CPU)
  --client-cpu N      CPU of corelay-loadgen and of this script (1)
  --spin-us N         the generator's busy polling (100000: never sleeps under load)
  --base-port P       node i listens on 127.0.0.1:(P + i) (7820)
  --out DIR           output directory (target/bench-cluster/<date>)
  --start-timeout S   longest wait for a node or Redis to be ready (15)

Builds
  --build             cargo build --release corelay and corelay-loadgen first
  --corelay-bin PATH  ($CARGO_TARGET_DIR or target)/release/corelay
  --loadgen-bin PATH  ($CARGO_TARGET_DIR or target)/release/corelay-loadgen
  --redis-bin PATH    redis-server (/usr/bin/redis-server)
  --corelay-env 'K=V ..'  more environment for corelay nodes (repeatable)
  --no-npm            skip `npm ci` in loadgen/reference (node_modules must exist)

  --report DIR        print the table of DIR again, run nothing
  -h, --help          this text
EOF
}

die() {
	echo "bench-cluster: $*" >&2
	exit 2
}
note() { echo "bench-cluster: $*" >&2; }

# ---------------------------------------------------------------- options
SERVERS=corelay,node
NODES=2
SPREADS=members,rooms
REPEAT=1
CLIENTS=1000
ROOM_SIZE=10
# 2 msg/s per client: 18,000 deliveries/s, which two Node socket.io nodes and Redis carry
# on the one core they share (about 60% of it here); at 10 msg/s they would saturate it
# and the run would measure the saturation.
RATE=2
PAYLOAD=64
DURATION=10
WARMUP=3
DRAIN=2
INTERVAL=0.5
NODE_CPU=0
REDIS_CPU=
CLIENT_CPU=1
SPIN_US=100000
BASE_PORT=7820
OUT=
START_TIMEOUT=15
BUILD=0
CORELAY_BIN=$TARGET/release/corelay
LOADGEN_BIN=$TARGET/release/corelay-loadgen
REDIS_BIN=/usr/bin/redis-server
CORELAY_ENV=()
NPM=1
REPORT_ONLY=
ARGS_GIVEN=("$@")
# Every generated client comes from loopback addresses: the per-address admission limits,
# made for the public, are lifted, and the per-connection message rates raised (still
# checked on every message, so their cost is measured), as in bench-peers.sh.
BENCH_LIMITS=(CORELAY_MAX_CONNECTIONS_PER_IP=1000000 CORELAY_ENGINEIO_MAX_SESSIONS_PER_IP=1000000
	CORELAY_ENGINEIO_HANDSHAKE_RATE=1000000
	CORELAY_RATE_LIMITS_NATIVE_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_NATIVE_MESSAGES_BURST=100000
	CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_BURST=100000)

need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
	case $1 in
	--servers) need "$@"; SERVERS=$2; shift ;;
	--nodes) need "$@"; NODES=$2; shift ;;
	--spreads | --spread) need "$@"; SPREADS=$2; shift ;;
	--repeat) need "$@"; REPEAT=$2; shift ;;
	--clients) need "$@"; CLIENTS=$2; shift ;;
	--room-size) need "$@"; ROOM_SIZE=$2; shift ;;
	--rate) need "$@"; RATE=$2; shift ;;
	--payload) need "$@"; PAYLOAD=$2; shift ;;
	--duration) need "$@"; DURATION=$2; shift ;;
	--warmup) need "$@"; WARMUP=$2; shift ;;
	--drain) need "$@"; DRAIN=$2; shift ;;
	--interval) need "$@"; INTERVAL=$2; shift ;;
	--node-cpu) need "$@"; NODE_CPU=$2; shift ;;
	--redis-cpu) need "$@"; REDIS_CPU=$2; shift ;;
	--client-cpu) need "$@"; CLIENT_CPU=$2; shift ;;
	--spin-us) need "$@"; SPIN_US=$2; shift ;;
	--base-port) need "$@"; BASE_PORT=$2; shift ;;
	--out) need "$@"; OUT=$2; shift ;;
	--start-timeout) need "$@"; START_TIMEOUT=$2; shift ;;
	--build) BUILD=1 ;;
	--corelay-bin) need "$@"; CORELAY_BIN=$2; shift ;;
	--loadgen-bin) need "$@"; LOADGEN_BIN=$2; shift ;;
	--redis-bin) need "$@"; REDIS_BIN=$2; shift ;;
	--corelay-env)
		need "$@"
		read -ra kv <<<"$2"
		CORELAY_ENV+=("${kv[@]}")
		shift
		;;
	--no-npm) NPM=0 ;;
	--report) need "$@"; REPORT_ONLY=$2; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
[[ -n $REDIS_CPU ]] || REDIS_CPU=$NODE_CPU

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in NODES REPEAT CLIENTS ROOM_SIZE PAYLOAD NODE_CPU REDIS_CPU CLIENT_CPU SPIN_US BASE_PORT START_TIMEOUT; do
	is_uint "${!v}" || die "${v,,} must be a whole number, not '${!v}'"
done
for v in RATE DURATION WARMUP DRAIN INTERVAL; do
	is_num "${!v}" || die "${v,,} must be a number, not '${!v}'"
done
((NODES >= 2)) || die "--nodes must be at least 2"
((REPEAT >= 1)) || die "--repeat must be at least 1"
((ROOM_SIZE >= 2)) || die "--room-size must be at least 2"
[[ $NODE_CPU != "$CLIENT_CPU" ]] || die "--node-cpu and --client-cpu must differ"
awk -v i="$INTERVAL" -v d="$DURATION" 'BEGIN {exit !(i > 0 && d >= 2 * i)}' ||
	die "--duration must be at least two --interval (the samples are one interval apart from its end)"
IFS=, read -ra SERVER_LIST <<<"$SERVERS"
IFS=, read -ra SPREAD_LIST <<<"$SPREADS"
for s in "${SERVER_LIST[@]}"; do
	case $s in corelay | corelay-sio | node) ;; *) die "unknown server '$s'" ;; esac
done
for s in "${SPREAD_LIST[@]}"; do
	case $s in members | rooms) ;; *) die "unknown spread '$s'" ;; esac
done

# ---------------------------------------------------------------- the table
# results.tsv columns (one run a row; NA where a figure could not be had):
#  1 server  2 spread  3 rep  4 rc  5 deliveries/s  6 lost  7 expected
#  8 CPU us/deliv total (nodes + redis)  9 nodes' CPU us/deliv, each, "/"-joined  10 redis
# 11-13 same-node p50 p99 p99.9 (us)  14 same-node count  15-17 cross-node  18 count
# 19 Redis commands/deliv  20 PUBLISH and SPUBLISH (sharded pub/sub) calls/deliv  21 Redis bytes in/deliv  22 out/deliv
# 23 bytes from Redis/deliv, all nodes  24 each node, "/"-joined  25 bytes to Redis/deliv
# 26 deliveries in the sampled span  27 span s  28 corelay envelopes published/deliv
# 29 received/deliv  30 rooms followed (each node, at the end of the span)
# 31 cores the nodes and Redis used together over the span  32 notes
print_table() {
	local file=$1
	[[ -s $file ]] || return 0
	awk -F'\t' -f <(
		cat <<'AWK'
function us(v) {
	if (v == "NA" || v == "") return "n/a"
	if (v < 1000) return sprintf("%.0fus", v)
	if (v < 10000) return sprintf("%.2fms", v / 1000)
	if (v < 1000000) return sprintf("%.1fms", v / 1000)
	return sprintf("%.2fs", v / 1000000)
}
function f(v, fmt) { return (v == "NA" || v == "") ? "n/a" : sprintf(fmt, v) }
function lat(a, b, c, n) { return (n == 0 || n == "NA") ? "-" : us(a) "/" us(b) "/" us(c) }
BEGIN {
	w = "%-12s %-8s %-3s %10s %6s | %8s %-17s %7s %5s | %-22s %-22s | %7s %7s %8s %8s | %8s %-15s"
	printf w "\n", "server", "spread", "run", "deliv/s", "lost", "CPU us", "nodes", "redis", "core", \
		"same node", "cross node", "redis", "PUBLISH", "redis in", "redis out", "node rx", "each node"
	printf w "\n", "", "", "", "", "", "per deliv", "per deliv", "", "use", "p50/p99/p99.9", \
		"p50/p99/p99.9", "cmd/dlv", "/dlv", "B/dlv", "B/dlv", "B/dlv", "B/dlv"
}
{
	printf w "\n", $1, $2, $3, f($5, "%.0f"), $6, f($8, "%.2f"), $9, f($10, "%.2f"), \
		($31 == "NA" || $31 == "") ? "n/a" : sprintf("%.0f%%", $31 * 100), \
		lat($11, $12, $13, $14), lat($15, $16, $17, $18), f($19, "%.3f"), f($20, "%.3f"), \
		f($21, "%.1f"), f($22, "%.1f"), f($23, "%.1f"), $24
	if ($32 != "" && $32 != "-") notes[++nn] = $1 " " $2 " run " $3 ": " $32
}
END {
	for (i = 1; i <= nn; i++) print "note: " notes[i]
}
AWK
	) "$file"
	cat <<'EOF'
CPU us per deliv: CPU time (utime + stime) over the sampled span / deliveries in it; "nodes"
is each node's, "CPU us" the nodes' and Redis's together. core use: the nodes' and Redis's
CPU over the span, as a share of one core (they share it: near 100% the cluster was
saturated). redis cmd, PUBLISH, in, out: Redis's commands, PUBLISH and SPUBLISH calls and
network bytes (INFO) per delivery. node rx: bytes the nodes received on their connections to Redis (ss),
all nodes and each, per delivery.
EOF
}

if [[ -n $REPORT_ONLY ]]; then
	print_table "$REPORT_ONLY/results.tsv"
	exit 0
fi

# ---------------------------------------------------------------- processes
REDIS_PID=
REDIS_PORT=
NODE_PIDS=()
LG_PID=
WORK=$(mktemp -d /tmp/bench-cluster.XXXXXX)

# shellcheck source=scripts/lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"

stop_cluster() {
	local pid
	for pid in "${NODE_PIDS[@]}"; do stop_pid "$pid" 4; done
	NODE_PIDS=()
	stop_pid "$REDIS_PID" 2
	REDIS_PID=
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$LG_PID" 3
	stop_cluster
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

# ---------------------------------------------------------------- preparation
for tool in taskset ss jq curl redis-cli; do
	command -v "$tool" >/dev/null || die "$tool is needed"
done
[[ -x $REDIS_BIN ]] || die "$REDIS_BIN is missing (apt-get install redis-server)"
ncpu=$(nproc --all)
((NODE_CPU < ncpu && REDIS_CPU < ncpu && CLIENT_CPU < ncpu)) || die "CPUs must be below $ncpu"
# The script's own work (sampling, waiting) goes to the generator's core, never the
# cluster's; the processes it starts are pinned explicitly.
taskset -pc "$CLIENT_CPU" $$ >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

want_server() {
	local s
	for s in "${SERVER_LIST[@]}"; do [[ $s == "$1" ]] && return 0; done
	return 1
}

cd "$ROOT"
if ((BUILD)); then
	note "building corelay and corelay-loadgen (release)"
	cargo build --release -p corelay --bin corelay -p corelay-loadgen --bin corelay-loadgen
fi
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN is missing: pass --build or --loadgen-bin"
if want_server corelay || want_server corelay-sio; then
	[[ -x $CORELAY_BIN ]] || die "$CORELAY_BIN is missing: pass --build or --corelay-bin"
fi
if want_server node; then
	command -v node >/dev/null || die "node is needed for --servers node"
	if ((NPM)); then
		note "npm ci in loadgen/reference"
		(cd loadgen/reference && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
	fi
	[[ -d loadgen/reference/node_modules/@socket.io/redis-adapter ]] ||
		die "loadgen/reference/node_modules lacks the Redis adapter (npm ci there)"
fi

[[ -n $OUT ]] || OUT=$TARGET/bench-cluster/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
touch "$OUT/results.tsv"
{
	echo "# bench-cluster $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "args: ${ARGS_GIVEN[*]}"
	echo "host: $(uname -srm), $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
	echo "nodes $NODES on cpu $NODE_CPU, redis on cpu $REDIS_CPU, generator and script on cpu $CLIENT_CPU (spin ${SPIN_US} us)"
	echo "load: $CLIENTS clients in rooms of $ROOM_SIZE at $RATE msg/s, $PAYLOAD B, ${DURATION} s after ${WARMUP} s warm-up, rows every ${INTERVAL} s"
	echo "redis: $("$REDIS_BIN" --version)"
	echo "loadgen: $LOADGEN_BIN ($("$LOADGEN_BIN" --version 2>/dev/null))"
	if want_server corelay || want_server corelay-sio; then
		echo "corelay: $CORELAY_BIN ($("$CORELAY_BIN" --version 2>/dev/null), built $(date -u -r "$CORELAY_BIN" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$CORELAY_BIN" | cut -c1-12)), --shards 1"
		echo "corelay env: ${BENCH_LIMITS[*]} ${CORELAY_ENV[*]}"
	fi
	if want_server node; then
		local_pkg() { jq -r .version "loadgen/reference/node_modules/$1/package.json"; }
		echo "node: $(node --version), socket.io $(local_pkg socket.io), @socket.io/redis-adapter $(local_pkg @socket.io/redis-adapter), redis $(local_pkg redis)"
	fi
} | tee -a "$OUT/env.txt"
echo "output: $OUT"

# ---------------------------------------------------------------- the cluster
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

node_port() { echo $((BASE_PORT + $1)); }

for ((i = 0; i < NODES; i++)); do
	p=$(node_port "$i")
	if listening "$p"; then
		die "port $p is busy: $(ss -Hltnp "sport = :$p" | head -1 | tr -s ' ') (--base-port)"
	fi
done

# A fresh redis-server on a free port; sets REDIS_PID and REDIS_PORT.
start_redis() {
	local log=$1 i
	REDIS_PORT=$((20000 + RANDOM % 20000))
	while listening "$REDIS_PORT"; do REDIS_PORT=$((REDIS_PORT + 1)); done
	# taskset execs: $! is redis-server itself.
	taskset -c "$REDIS_CPU" "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 \
		--save "" --appendonly no --logfile "" >"$log" 2>&1 &
	REDIS_PID=$!
	for ((i = 0; i < START_TIMEOUT * 20; i++)); do
		kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited at start: $(tail -5 "$log")"
		[[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && return 0
		sleep 0.05
	done
	die "redis-server did not answer on port $REDIS_PORT within ${START_TIMEOUT} s"
}

# start_nodes KIND BASE: NODES fresh nodes on the Redis; sets NODE_PIDS.
start_nodes() {
	local kind=$1 base=$2 i port envs cmd deadline
	local redis_url=redis://127.0.0.1:$REDIS_PORT
	for ((i = 0; i < NODES; i++)); do
		port=$(node_port "$i")
		case $kind in
		corelay*)
			envs=("${BENCH_LIMITS[@]}" "${CORELAY_ENV[@]}" CORELAY_CLUSTER_REDIS="$redis_url"
				CORELAY_CLUSTER_NODE_ID="bench-$i")
			cmd=("$CORELAY_BIN" serve --listen "127.0.0.1:$port" --shards 1 --cpus "$NODE_CPU")
			;;
		node)
			envs=(REDIS_URL="$redis_url" PORT="$port" HOST=127.0.0.1)
			cmd=(node "$ROOT/loadgen/reference/socketio-relay.js")
			;;
		esac
		# env and taskset exec: $! is the node itself.
		env "${envs[@]}" taskset -c "$NODE_CPU" "${cmd[@]}" >"$base.node$i.log" 2>&1 &
		NODE_PIDS+=($!)
	done
	deadline=$((SECONDS + START_TIMEOUT))
	for ((i = 0; i < NODES; i++)); do
		port=$(node_port "$i")
		until listening "$port"; do
			kill -0 "${NODE_PIDS[i]}" 2>/dev/null || die "$kind node $i exited at start: $(tail -5 "$base.node$i.log")"
			((SECONDS < deadline)) || die "$kind node $i did not listen on $port within ${START_TIMEOUT} s"
			sleep 0.05
		done
	done
	# corelay nodes are ready once each sees all the others through Redis.
	if [[ $kind == corelay* ]]; then
		for ((i = 0; i < NODES; i++)); do
			port=$(node_port "$i")
			until [[ $(curl -s --max-time 1 "http://127.0.0.1:$port/readyz" | jq -r '.cluster.nodes // 0' 2>/dev/null) == "$NODES" ]]; do
				((SECONDS < deadline)) || die "corelay node $i does not see $NODES nodes within ${START_TIMEOUT} s"
				sleep 0.1
			done
		done
	fi
}

# ---------------------------------------------------------------- samples
# sample KIND FILE ROW: one raw sample of everything into FILE, parsed after the run
# (parse_sample). It runs on the generator's core while the generator busy-polls, so it
# forks as little as it can (redis-cli, ss, curl: one each) and reads /proc with builtins;
# `ss -p` (which walks every process's descriptors, the generator's thousands too) is left
# to map_sockets, once after the run.
# ROW is the generator's progress row that triggered it (its cumulative `delivered`).
sample() {
	local kind=$1 file=$2 row=$3 i stat scrape=()
	{
		echo "#t $EPOCHREALTIME"
		echo "#row $row"
		for ((i = 0; i < NODES; i++)); do
			read -r stat <"/proc/${NODE_PIDS[i]}/stat" && echo "#stat node$i $stat"
		done
		read -r stat <"/proc/$REDIS_PID/stat" && echo "#stat redis $stat"
		echo "#info"
		redis-cli -p "$REDIS_PORT" INFO all
		echo "#ss"
		# The nodes' side of their connections to Redis, by local port.
		ss -Htin "dport = :$REDIS_PORT"
		if [[ $kind == corelay* ]]; then
			for ((i = 0; i < NODES; i++)); do scrape+=("http://127.0.0.1:$((BASE_PORT + i))/metrics"); done
			echo "#metrics"
			# One transfer per node, each followed by its end mark.
			curl -s --max-time 2 -w '\n#metrics-end\n' "${scrape[@]}"
		fi
		echo "#t_end $EPOCHREALTIME"
	} >"$file.raw" 2>&1
}

# map_sockets FILE: which node owns each connection to Redis, as `local-port node` lines.
# The connections last as long as the nodes, so one look after the run (the nodes still
# up) names those of both samples.
map_sockets() {
	ss -Htnp "dport = :$REDIS_PORT" | awk -v pids="${NODE_PIDS[*]}" '
		BEGIN { n = split(pids, p, " "); for (i = 1; i <= n; i++) node_of[p[i]] = i - 1 }
		match($0, /pid=[0-9]+/) {
			pid = substr($0, RSTART + 4, RLENGTH - 4)
			port = $4; sub(/.*:/, "", port)
			if (pid in node_of) print port, node_of[pid]
		}' >"$1"
}

# parse_sample FILE MAP: FILE.raw as `key value` lines in FILE; MAP from map_sockets.
parse_sample() {
	awk -v map="$2" '
		FILENAME == map { node_of[$1] = $2; next }
		FNR == 1 { m = 0 }
		{ sub(/\r$/, "") }
		$1 == "#t" { print "t", $2; next }
		$1 == "#t_end" { print "t_end", $2; next }
		$1 == "#row" { if (match($0, / delivered [0-9]+/)) print "delivered", substr($0, RSTART + 11, RLENGTH - 11); next }
		# utime and stime are fields 14 and 15, the 12th and 13th after the command name
		# (which may hold spaces).
		$1 == "#stat" { who = $2; sub(/^.*\) /, ""); print "cpu." who, $12 + $13; next }
		$1 == "#info" || $1 == "#ss" || $1 == "#metrics" { section = $1; next }
		$1 == "#metrics-end" { m++; next }
		section == "#info" {
			split($0, kv, ":")
			if (kv[1] == "total_commands_processed") print "redis.cmds", kv[2]
			else if (kv[1] == "total_net_input_bytes") print "redis.in", kv[2]
			else if (kv[1] == "total_net_output_bytes") print "redis.out", kv[2]
			else if (kv[1] ~ /^cmdstat_/ && match($0, /calls=[0-9]+/)) print "cmd." substr(kv[1], 9), substr($0, RSTART + 6, RLENGTH - 6)
			next
		}
		# A socket line (state, queues, local and peer address), then its tcp_info line.
		section == "#ss" && $1 ~ /^[A-Z-]+$/ { port = $4; sub(/.*:/, "", port); node = (port in node_of) ? node_of[port] : ""; next }
		section == "#ss" && node != "" {
			if (match($0, /bytes_received:[0-9]+/)) rx[node] += substr($0, RSTART + 15, RLENGTH - 15)
			if (match($0, /bytes_sent:[0-9]+/)) tx[node] += substr($0, RSTART + 11, RLENGTH - 11)
			node = ""; next
		}
		section == "#metrics" && $1 == "corelay_cluster_published_total" { print "pub.node" m, $2 }
		section == "#metrics" && $1 == "corelay_cluster_received_total" { print "recv.node" m, $2 }
		section == "#metrics" && $1 == "corelay_cluster_rooms_followed" { print "followed.node" m, $2 }
		END { for (q in rx) { print "rx.node" q, rx[q]; print "tx.node" q, tx[q] } }
	' "$2" "$1.raw" >"$1"
}

# figures BEFORE AFTER JSON: the results.tsv figures 8-10 and 19-30, tab-separated.
figures() {
	awk -v n="$NODES" -v tck="$CLK_TCK" '
		FNR == NR { a[$1] = $2; next }
		{ b[$1] = $2 }
		function d(k) { return (k in a && k in b && b[k] >= a[k]) ? b[k] - a[k] : "NA" }
		function per(v, dl) { return (v == "NA" || dl <= 0) ? "NA" : v / dl }
		# A command never called has no line in INFO commandstats.
		function calls(k) { return (k in b) ? b[k] - ((k in a) ? a[k] : 0) : 0 }
		END {
			dl = d("delivered")
			nodes_cpu = 0; ok = 1; each = ""
			for (i = 0; i < n; i++) {
				c = d("cpu.node" i); if (c == "NA") ok = 0
				v = per(c == "NA" ? "NA" : c / tck * 1e6, dl)
				each = each (i ? "/" : "") (v == "NA" ? "n/a" : sprintf("%.2f", v))
				if (c != "NA") nodes_cpu += c
			}
			r = d("cpu.redis")
			total = (ok && r != "NA") ? per((nodes_cpu + r) / tck * 1e6, dl) : "NA"
			redis = per(r == "NA" ? "NA" : r / tck * 1e6, dl)
			rx_all = 0; rx_ok = 1; rx_each = ""; tx_all = 0; tx_ok = 1
			for (i = 0; i < n; i++) {
				x = d("rx.node" i); if (x == "NA") rx_ok = 0; else rx_all += x
				v = per(x, dl); rx_each = rx_each (i ? "/" : "") (v == "NA" ? "n/a" : sprintf("%.1f", v))
				y = d("tx.node" i); if (y == "NA") tx_ok = 0; else tx_all += y
			}
			pub = 0; recv = 0; cl = 0; followed = ""
			for (i = 0; i < n; i++) {
				if (("pub.node" i) in b) { cl = 1; pub += d("pub.node" i); recv += d("recv.node" i) }
				if (("followed.node" i) in b) followed = followed (i ? "/" : "") b["followed.node" i]
			}
			span = d("t")
			busy = (ok && r != "NA" && span > 0) ? (nodes_cpu + r) / tck / span : "NA"
			printf "%s\t%s\t%s", total, each, redis
			printf "\t%s\t%s\t%s\t%s", per(d("redis.cmds"), dl), per(calls("cmd.publish") + calls("cmd.spublish"), dl), per(d("redis.in"), dl), per(d("redis.out"), dl)
			printf "\t%s\t%s\t%s", rx_ok ? per(rx_all, dl) : "NA", rx_each, tx_ok ? per(tx_all, dl) : "NA"
			printf "\t%s\t%s", dl, span
			printf "\t%s\t%s\t%s\t%s\n", cl ? per(pub, dl) : "NA", cl ? per(recv, dl) : "NA", followed == "" ? "NA" : followed, busy
		}' "$1" "$2"
}

# ---------------------------------------------------------------- one run
RUN_NO=0

run_one() {
	local kind=$1 spread=$2 rep=$3
	local name=$kind-$spread-r$rep base proto path urls="" i limit before_t after_t line t
	base=$OUT/$name
	RUN_NO=$((RUN_NO + 1))
	printf '[%d] %-12s %-8s run %d: ' "$RUN_NO" "$kind" "$spread" "$rep"
	proto=socketio path=/socket.io/
	[[ $kind == corelay ]] && proto=native path=/ws
	start_redis "$base.redis.log"
	start_nodes "$kind" "$base"
	for ((i = 0; i < NODES; i++)); do urls+="${urls:+,}ws://127.0.0.1:$(node_port "$i")$path"; done

	# The rows that time the samples: the window opens at the warm-up's end; the generator
	# may stop right after the window's last send, so the second sample is one interval
	# before the end.
	before_t=$WARMUP
	after_t=$(awk -v w="$WARMUP" -v d="$DURATION" -v i="$INTERVAL" 'BEGIN {print w + d - i}')
	limit=$(awk -v w="$WARMUP" -v d="$DURATION" -v dr="$DRAIN" -v c="$CLIENTS" 'BEGIN {printf "%d", w + d + dr + 30 + c / 100}')
	local fifo=$WORK/progress
	rm -f "$fifo"
	mkfifo "$fifo"
	timeout -k 5 "$limit" taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" relay \
		--protocol "$proto" --url "$urls" --spread "$spread" \
		--clients "$CLIENTS" --room-size "$ROOM_SIZE" --rate "$RATE" --payload "$PAYLOAD" \
		--duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" --interval "$INTERVAL" \
		--cpus "$CLIENT_CPU" --spin-us "$SPIN_US" \
		--label "$kind x$NODES $spread" --json "$base.json" >"$base.txt" 2>"$fifo" &
	LG_PID=$!
	local have_before=0 have_after=0
	: >"$base.progress"
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$base.progress"
		[[ $line == t=* ]] || continue
		t=${line#t=}
		t=${t%%s*}
		t=${t// /}
		if ((!have_before)) && awk -v t="$t" -v w="$before_t" 'BEGIN {exit !(t >= w - 1e-6)}'; then
			sample "$kind" "$base.before" "$line"
			have_before=1
		elif ((have_before && !have_after)) && awk -v t="$t" -v w="$after_t" 'BEGIN {exit !(t >= w - 1e-6)}'; then
			sample "$kind" "$base.after" "$line"
			have_after=1
		fi
	done <"$fifo"
	local rc=0
	wait "$LG_PID" || rc=$?
	LG_PID=
	local notes=()
	for ((i = 0; i < NODES; i++)); do
		kill -0 "${NODE_PIDS[i]}" 2>/dev/null || notes+=("node $i exited during the run (see $name.node$i.log)")
	done
	if ((rc == 124 || rc == 137)); then
		notes+=("the generator was stopped after ${limit} s")
	fi

	local figs
	if ((have_before && have_after)); then
		map_sockets "$base.sockets"
		parse_sample "$base.before" "$base.sockets"
		parse_sample "$base.after" "$base.sockets"
		figs=$(figures "$base.before" "$base.after")
	else
		notes+=("no samples: the window's rows never came (see $name.progress)")
		figs=$(printf 'NA\tn/a\tNA\tNA\tNA\tNA\tNA\tNA\tn/a\tNA\tNA\tNA\tNA\tNA\tNA\tNA')
	fi
	local rep_figs="NA"$'\t'"NA"$'\t'"NA"
	local lat="NA"$'\t'"NA"$'\t'"NA"$'\t'"NA"$'\t'"NA"$'\t'"NA"$'\t'"NA"$'\t'"NA"
	if [[ -f $base.json ]]; then
		rep_figs=$(jq -r '[.messages.delivered_per_s, .messages.lost, .messages.expected] | map(tostring) | @tsv' "$base.json")
		lat=$(jq -r '[.latency_same_node, .latency_cross_node] | map(.p50_us, .p99_us, .p999_us, .count) | map(tostring) | @tsv' "$base.json")
		while IFS= read -r w; do notes+=("$w"); done < <(jq -r '.warnings[]' "$base.json")
		if [[ $spread == rooms ]] && (($(jq -r '.latency_cross_node.count' "$base.json") > 0)); then
			notes+=("cross-node deliveries in the rooms spread")
		fi
	else
		notes+=("no report (exit $rc, see $name.txt)")
	fi
	# The nodes and Redis share --node-cpu (and --redis-cpu): near all of it, the cluster
	# was saturated and its figures say so more than anything else.
	local busy cores=1
	[[ $REDIS_CPU != "$NODE_CPU" ]] && cores=2
	busy=$(cut -f16 <<<"$figs")
	if awk -v b="$busy" -v c="$cores" 'BEGIN {exit !(b != "NA" && b > 0.9 * c)}'; then
		notes+=("the cluster's CPU was saturated ($(awk -v b="$busy" 'BEGIN {printf "%.0f%%", b * 100}') of a core): lower --rate or --clients")
	fi
	stop_cluster
	local joined=-
	((${#notes[@]})) && joined=$(
		IFS=';'
		echo "${notes[*]}"
	)
	# Columns 8-10 and 19-30 come from the samples, in that order.
	local f8_10 f19_30
	f8_10=$(cut -f1-3 <<<"$figs")
	f19_30=$(cut -f4- <<<"$figs")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$spread" "$rep" "$rc" "$rep_figs" \
		"$f8_10" "$lat" "$f19_30" "$joined" >>"$OUT/results.tsv"

	# One line of feedback, then the run's figures in full.
	local took=n/a
	[[ -f $base.after ]] && took=$(awk '$1 == "t" {a = $2} $1 == "t_end" {b = $2} END {printf "%.0f", (b - a) * 1000}' "$base.after")
	tail -1 "$OUT/results.tsv" | awk -F'\t' -v took="$took" '
		function f(v, fmt) { return (v == "NA" || v == "") ? "n/a" : sprintf(fmt, v) }
		{
			printf "%s deliveries/s, lost %s; CPU us/deliv %s (nodes %s, redis %s); same p99 %s us (%s), cross p99 %s us (%s)\n", \
				f($5, "%.0f"), $6, f($8, "%.2f"), $9, f($10, "%.2f"), $12, $14, $16, $18
			printf "    redis per delivery: %s commands (PUBLISH %s), %s B in, %s B out; nodes received from redis %s B/deliv (%s), sent %s B/deliv", \
				f($19, "%.3f"), f($20, "%.3f"), f($21, "%.1f"), f($22, "%.1f"), f($23, "%.1f"), $24, f($25, "%.1f")
			if ($28 != "NA") printf "; corelay envelopes published %s, received %s per deliv, rooms followed %s", f($28, "%.3f"), f($29, "%.3f"), $30
			printf "\n    nodes and redis used %s of a core; span %s s, %s deliveries sampled, sampling took %s ms", \
				($31 == "NA" ? "n/a" : sprintf("%.0f%%", $31 * 100)), f($27, "%.2f"), $26, took
			if ($32 != "-" && $32 != "") printf "\n    notes: %s", $32
			printf "\n"
		}'
}

# ---------------------------------------------------------------- runs
for ((rep = 1; rep <= REPEAT; rep++)); do
	for spread in "${SPREAD_LIST[@]}"; do
		for kind in "${SERVER_LIST[@]}"; do
			run_one "$kind" "$spread" "$rep"
		done
	done
done
{
	echo
	echo "== $NODES nodes: $CLIENTS clients in rooms of $ROOM_SIZE at $RATE msg/s, $PAYLOAD B; ${DURATION} s after ${WARMUP} s warm-up"
	print_table "$OUT/results.tsv"
} | tee -a "$OUT/summary.txt"
echo "runs: $OUT/results.tsv; table: $OUT/summary.txt"
