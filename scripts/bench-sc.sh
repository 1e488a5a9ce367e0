#!/usr/bin/env bash
# The SocketCluster channel workload: corelay's /socketcluster/ endpoint (one shard) beside
# the Node socketcluster-server 20.x (loadgen/peers/socketcluster: one worker, open
# channels), each pinned to one CPU, driven by `corelay-loadgen --protocol socketcluster`
# pinned to another. See loadgen/README.md, "SocketCluster".
#
#   scripts/bench-sc.sh                                  # compare once, then saturation
#   scripts/bench-sc.sh --repeat 5 --no-saturation
#   scripts/bench-sc.sh --help
#
# The workload: --clients SocketCluster clients in blocks of --channel-size; each subscribes
# to its block's channel and publishes --rate msg/s of --payload bytes to it (`#publish`
# without a call id: transmitPublish). Every publish reaches every subscriber of the
# channel, the publisher too, with both servers: a channel of 10 makes 10 deliveries per
# publish. Latency is one-way, from each message's intended send time (open loop).
#
# Two phases, both servers in one session:
#   compare     the same workload at --rate, --repeat times, the servers interleaved (run 1
#               of each, then run 2, ...); per run: server CPU per delivery (utime + stime of
#               the server process from /proc over the measured window, / deliveries),
#               p50/p99/p99.9, deliveries, loss, the generator's send lag.
#   saturation  the rates of --sat-rates in order, each step run on every server still in
#               the race, until a step fails for it: loss, generator send lag (pacing lag p99
#               >= --sat-lag-ms: the generator, not the server, was the limit), p99 >=
#               --sat-p99-ms, a failed or dropped connection, or no delivery. Bounded: at
#               most --sat-max-steps steps, and no step starts after --sat-budget seconds.
#
# Every server is a fresh process per run, pinned with `taskset -c SERVER_CPU`, stopped by
# its PID (scripts/lib/procs.sh); every generator run is bounded by `timeout`. Outputs (--out,
# default target/bench-sc/<date>): per run <phase>/<server>@<rate>-r<n>.json (the loadgen
# report), .txt (its table), .progress, .server.log; runs.tsv indexes them, env.txt records
# the machine, commit, binaries and versions, summary.txt the tables.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

usage() {
	cat <<'EOF'
usage: scripts/bench-sc.sh [options]

What to run
  --servers LIST         corelay,node (default: both); corelay is `corelay serve --shards 1`
                         at /socketcluster/, node is loadgen/peers/socketcluster/server.js
                         (socketcluster-server 20.0.1, one worker)
  --repeat N             compare runs of each server, interleaved (1)
  --clients N            SocketCluster clients (1000)
  --channel-size N       subscribers per channel, each also a publisher (10)
  --rate R               compare: msg/s each client publishes (2: 20,000 deliveries/s with
                         the defaults; CPU per delivery compares only below both servers'
                         saturation, which the saturation phase shows)
  --payload B            payload bytes, at least 48: the timing header in hex (64)
  --duration S           compare: measured seconds (10)
  --warmup S             compare: seconds before the window (3)
  --drain S              longest wait for in-flight messages after the last send (2)
  --no-compare           skip the compare phase
  --no-saturation        skip the saturation phase
  --sat-rates LIST       saturation: rates tried in order (2,5,10,15,20,30,40,60,80,100)
  --sat-max-steps N      saturation: at most N steps per server (10)
  --sat-budget S         saturation: no step starts after S seconds of the phase (900)
  --sat-duration S       saturation: measured seconds of a step (5)
  --sat-warmup S         saturation: warm-up of a step (2)
  --sat-p99-ms MS        saturation: a step fails at p99 >= MS (10)
  --sat-lag-ms MS        saturation: a step fails at a generator pacing lag p99 >= MS (1)

Where
  --server-cpu N         CPU of the server (0)
  --client-cpu N         CPU of the load generator (1)
  --spin-us N            the generator spins N us after its last send or arrival before it
                         sleeps (100000: never sleeps under load; see loadgen/README.md)
  --server-addr IP       address the servers listen on (127.0.0.1)
  --corelay-port P       (7700)
  --node-port P          (8000)
  --start-timeout S      longest wait for a server's port (15)
  --out DIR              output directory (target/bench-sc/<date>)

Builds
  --build                cargo build --release corelay and corelay-loadgen first; without it
                         the binaries in $CARGO_TARGET_DIR (or target)/release are used
  --corelay-bin PATH     corelay binary
  --loadgen-bin PATH     corelay-loadgen binary
  --corelay-env 'K=V ..' more environment for corelay (repeatable)
  --no-npm               skip `npm ci` in loadgen/peers/socketcluster (node_modules must exist)
  -h, --help             this text
EOF
}

die() {
	echo "bench-sc: $*" >&2
	exit 2
}
note() { echo "bench-sc: $*" >&2; }

# ---------------------------------------------------------------- options
SERVERS=corelay,node
REPEAT=1
CLIENTS=1000
CHANNEL=10
RATE=2
PAYLOAD=64
DURATION=10
WARMUP=3
DRAIN=2
COMPARE=1
SATURATION=1
SAT_RATES=2,5,10,15,20,30,40,60,80,100
SAT_MAX_STEPS=10
SAT_BUDGET=900
SAT_DURATION=5
SAT_WARMUP=2
SAT_P99_MS=10
SAT_LAG_MS=1
SCPU=0
CCPU=1
SPIN_US=100000
SERVER_ADDR=127.0.0.1
CORELAY_PORT=7700
NODE_PORT=8000
START_TIMEOUT=15
OUT=
BUILD=0
CORELAY_BIN=$TARGET/release/corelay
LOADGEN_BIN=$TARGET/release/corelay-loadgen
CORELAY_ENV=()
NPM=1
# Every generated client comes from the generator's addresses, and the per-address
# admission limits are made for the public: lifted. The SocketCluster message rate per
# connection (120/s by default) is raised above the fastest saturation step, still checked
# on every message so its cost is measured, as bench-peers.sh does for the other protocols.
BENCH_LIMITS=(CORELAY_MAX_CONNECTIONS_PER_IP=1000000
	CORELAY_RATE_LIMITS_SOCKETCLUSTER_MESSAGES_PER_S=100000
	CORELAY_RATE_LIMITS_SOCKETCLUSTER_MESSAGES_BURST=100000
	CORELAY_RATE_LIMITS_SOCKETCLUSTER_BYTES_PER_S=100000000
	CORELAY_RATE_LIMITS_SOCKETCLUSTER_BYTES_BURST=100000000)
ARGS_GIVEN=("$@")

need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
	case $1 in
	--servers) need "$@"; SERVERS=$2; shift ;;
	--repeat) need "$@"; REPEAT=$2; shift ;;
	--clients) need "$@"; CLIENTS=$2; shift ;;
	--channel-size) need "$@"; CHANNEL=$2; shift ;;
	--rate) need "$@"; RATE=$2; shift ;;
	--payload) need "$@"; PAYLOAD=$2; shift ;;
	--duration) need "$@"; DURATION=$2; shift ;;
	--warmup) need "$@"; WARMUP=$2; shift ;;
	--drain) need "$@"; DRAIN=$2; shift ;;
	--no-compare) COMPARE=0 ;;
	--no-saturation) SATURATION=0 ;;
	--sat-rates) need "$@"; SAT_RATES=$2; shift ;;
	--sat-max-steps) need "$@"; SAT_MAX_STEPS=$2; shift ;;
	--sat-budget) need "$@"; SAT_BUDGET=$2; shift ;;
	--sat-duration) need "$@"; SAT_DURATION=$2; shift ;;
	--sat-warmup) need "$@"; SAT_WARMUP=$2; shift ;;
	--sat-p99-ms) need "$@"; SAT_P99_MS=$2; shift ;;
	--sat-lag-ms) need "$@"; SAT_LAG_MS=$2; shift ;;
	--server-cpu) need "$@"; SCPU=$2; shift ;;
	--client-cpu) need "$@"; CCPU=$2; shift ;;
	--spin-us) need "$@"; SPIN_US=$2; shift ;;
	--server-addr) need "$@"; SERVER_ADDR=$2; shift ;;
	--corelay-port) need "$@"; CORELAY_PORT=$2; shift ;;
	--node-port) need "$@"; NODE_PORT=$2; shift ;;
	--start-timeout) need "$@"; START_TIMEOUT=$2; shift ;;
	--out) need "$@"; OUT=$2; shift ;;
	--build) BUILD=1 ;;
	--corelay-bin) need "$@"; CORELAY_BIN=$2; shift ;;
	--loadgen-bin) need "$@"; LOADGEN_BIN=$2; shift ;;
	--corelay-env)
		need "$@"
		read -ra kv <<<"$2"
		CORELAY_ENV+=("${kv[@]}")
		shift
		;;
	--no-npm) NPM=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in REPEAT CLIENTS CHANNEL PAYLOAD SAT_MAX_STEPS SAT_BUDGET SCPU CCPU SPIN_US \
	CORELAY_PORT NODE_PORT START_TIMEOUT; do
	is_uint "${!v}" || die "--${v,,} must be a whole number, not '${!v}'"
done
for v in RATE DURATION WARMUP DRAIN SAT_DURATION SAT_WARMUP SAT_P99_MS SAT_LAG_MS; do
	is_num "${!v}" || die "--${v,,} must be a number, not '${!v}'"
done
((REPEAT >= 1)) || die "--repeat must be at least 1"
((CHANNEL >= 2)) || die "--channel-size must be at least 2"
((CLIENTS >= CHANNEL)) || die "--clients must be at least --channel-size"
((PAYLOAD >= 48)) || die "--payload must be at least 48 (the timing header in hex)"
((SAT_MAX_STEPS >= 1)) || die "--sat-max-steps must be at least 1"
((COMPARE || SATURATION)) || die "--no-compare and --no-saturation leave nothing to run"
[[ $SCPU != "$CCPU" ]] || die "--server-cpu and --client-cpu must differ"
[[ $CORELAY_PORT != "$NODE_PORT" ]] || die "--corelay-port and --node-port must differ"
IFS=, read -ra SERVER_LIST <<<"$SERVERS"
IFS=, read -ra SAT_RATE_LIST <<<"$SAT_RATES"
((${#SERVER_LIST[@]} > 0)) || die "--servers names no server"
for s in "${SERVER_LIST[@]}"; do
	case $s in corelay | node) ;; *) die "unknown server '$s' (corelay, node)" ;; esac
done
for r in "${SAT_RATE_LIST[@]}"; do is_num "$r" || die "bad rate '$r' in --sat-rates"; done
((${#SAT_RATE_LIST[@]} > SAT_MAX_STEPS)) && SAT_RATE_LIST=("${SAT_RATE_LIST[@]:0:SAT_MAX_STEPS}")

want_server() {
	local s
	for s in "${SERVER_LIST[@]}"; do [[ $s == "$1" ]] && return 0; done
	return 1
}

# ---------------------------------------------------------------- processes
SERVER_PID=
LG_PID=

# shellcheck source=scripts/lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$LG_PID" 3
	stop_pid "$SERVER_PID" 3
	exit "$rc"
}
trap cleanup EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

# ---------------------------------------------------------------- preparation
command -v taskset >/dev/null || die "taskset is needed (util-linux)"
command -v ss >/dev/null || die "ss is needed (iproute2)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
ncpu=$(nproc --all)
((SCPU < ncpu && CCPU < ncpu)) || die "--server-cpu/--client-cpu must be below $ncpu"
# One file per client: raise the soft limit to the hard one (the servers inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
((CLIENTS + 200 <= NOFILE)) || die "$CLIENTS clients need more than ulimit -n $NOFILE"

cd "$ROOT"
if ((BUILD)); then
	note "building corelay and corelay-loadgen (release)"
	cargo build --release -p corelay --bin corelay -p corelay-loadgen --bin corelay-loadgen
fi
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN is missing: pass --build or --loadgen-bin"
if want_server corelay; then
	[[ -x $CORELAY_BIN ]] || die "$CORELAY_BIN is missing: pass --build or --corelay-bin"
fi
PEER_DIR=$ROOT/loadgen/peers/socketcluster
if want_server node; then
	command -v node >/dev/null || die "node is needed for --servers node"
	if ((NPM)); then
		note "npm ci in loadgen/peers/socketcluster"
		(cd "$PEER_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
			die "npm ci in $PEER_DIR failed"
	fi
	[[ -f $PEER_DIR/node_modules/socketcluster-server/package.json ]] ||
		die "$PEER_DIR/node_modules is missing (npm ci there, or drop --no-npm)"
fi

[[ -n $OUT ]] || OUT=$TARGET/bench-sc/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/runs.tsv"

# Longest a generator run may take: warm-up + window + drain, plus the connection setup (up
# to 10 s per connection attempt, 256 at a time) and the generator's own grace.
run_limit() { # warmup duration
	awk -v w="$1" -v d="$2" -v dr="$DRAIN" -v c="$CLIENTS" 'BEGIN {printf "%d", w + d + dr + 30 + c / 100}'
}
COMPARE_LIMIT=$(run_limit "$WARMUP" "$DURATION")
SAT_LIMIT=$(run_limit "$SAT_WARMUP" "$SAT_DURATION")
MAX_S=0
((COMPARE)) && MAX_S=$((REPEAT * ${#SERVER_LIST[@]} * (COMPARE_LIMIT + START_TIMEOUT + 10)))
((SATURATION)) && MAX_S=$((MAX_S + SAT_BUDGET + ${#SERVER_LIST[@]} * (SAT_LIMIT + START_TIMEOUT + 10)))

{
	echo "# bench-sc $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "args: ${ARGS_GIVEN[*]}"
	echo "host: $(uname -srm), $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
	echo "server cpu $SCPU, generator cpu $CCPU, spin ${SPIN_US} us, addr $SERVER_ADDR, nofile $NOFILE"
	echo "workload: $CLIENTS clients, channels of $CHANNEL, $PAYLOAD B"
	((COMPARE)) && echo "compare: @${RATE}/s x $REPEAT, ${DURATION} s after ${WARMUP} s warm-up"
	((SATURATION)) && echo "saturation: rates ${SAT_RATE_LIST[*]}, ${SAT_DURATION} s after ${SAT_WARMUP} s, fails at loss, lag p99 >= ${SAT_LAG_MS} ms, p99 >= ${SAT_P99_MS} ms; budget ${SAT_BUDGET} s"
	echo "loadgen: $LOADGEN_BIN ($("$LOADGEN_BIN" --version 2>/dev/null))"
	if want_server corelay; then
		echo "corelay: $CORELAY_BIN ($("$CORELAY_BIN" --version 2>/dev/null), sha256 $(sha256sum "$CORELAY_BIN" | cut -c1-12)), 1 shard"
		echo "corelay env: ${BENCH_LIMITS[*]} ${CORELAY_ENV[*]}"
	fi
	if want_server node; then
		echo "node: $(node --version), socketcluster-server $(jq -r .version "$PEER_DIR/node_modules/socketcluster-server/package.json"), ws $(jq -r .version "$PEER_DIR/node_modules/ws/package.json")"
	fi
	echo "bounded: at most ~${MAX_S} s"
} | tee "$OUT/env.txt"
echo "output: $OUT"

# ---------------------------------------------------------------- servers
port_of() {
	case $1 in
	corelay) echo "$CORELAY_PORT" ;;
	node) echo "$NODE_PORT" ;;
	esac
}

listening() { # port: is something listening on it?
	ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# start_server KIND LOGFILE: a fresh pinned server; sets SERVER_PID.
start_server() {
	local kind=$1 log=$2 port envs=() cmd=() i
	port=$(port_of "$kind")
	listening "$port" && die "port $port is busy: $(ss -Hltnp "sport = :$port" | head -1 | tr -s ' ')"
	case $kind in
	corelay)
		envs=("${BENCH_LIMITS[@]}" "${CORELAY_ENV[@]}")
		cmd=("$CORELAY_BIN" serve --listen "$SERVER_ADDR:$port" --shards 1 --cpus "$SCPU")
		;;
	node)
		envs=(PORT="$port" HOST="$SERVER_ADDR")
		cmd=(node "$PEER_DIR/server.js")
		;;
	esac
	# env and taskset exec: $! is the server itself, whose /proc times are measured.
	env "${envs[@]}" taskset -c "$SCPU" "${cmd[@]}" >"$log" 2>&1 &
	SERVER_PID=$!
	for ((i = 0; i < START_TIMEOUT * 20; i++)); do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			wait "$SERVER_PID" 2>/dev/null || true
			SERVER_PID=
			die "$kind exited at start; its log ($log):"$'\n'"$(tail -20 "$log")"
		fi
		listening "$port" && return 0
		sleep 0.05
	done
	die "$kind did not listen on $SERVER_ADDR:$port within ${START_TIMEOUT} s (log: $log)"
}

stop_server() {
	local port=$1 i
	stop_pid "$SERVER_PID" 4
	SERVER_PID=
	for ((i = 0; i < 100; i++)); do
		listening "$port" || return 0
		sleep 0.05
	done
	die "port $port still busy after the server stopped"
}

# ---------------------------------------------------------------- figures
# One TSV row of a report: cpu_us_per_delivery p50 p99 p999 delivered expected
# delivered_per_s lost lag_p99 failed dropped cpu_cores (NA where absent).
figures() {
	jq -r '
	  def na: if . == null then "NA" else tostring end;
	  [ (if .server != null and .messages.delivered > 0
	       then .server.cpu_s * 1e6 / .messages.delivered else null end),
	    .latency.p50_us, .latency.p99_us, .latency.p999_us,
	    .messages.delivered, .messages.expected, .messages.delivered_per_s,
	    .messages.lost, .pacing_lag.p99_us,
	    .connections.failed, .connections.dropped, .server.cpu_cores
	  ] | map(na) | @tsv' "$1" 2>/dev/null
}

us() { # microseconds -> short text
	awk -v v="$1" 'BEGIN {
		if (v == "NA" || v == "") { print "n/a"; exit }
		if (v < 1000) printf "%.0fus\n", v
		else if (v < 1e6) printf "%.2fms\n", v / 1000
		else printf "%.2fs\n", v / 1e6 }'
}

# Why a saturation step fails, or nothing when it passes.
step_failure() { # figures...
	local cpu=$1 p50=$2 p99=$3 p999=$4 delivered=$5 expected=$6 dps=$7 lost=$8 lag=$9 failed=${10} dropped=${11}
	awk -v p99="$p99" -v lag="$lag" -v lost="$lost" -v d="$delivered" -v f="$failed" -v dr="$dropped" \
		-v p99lim="$SAT_P99_MS" -v laglim="$SAT_LAG_MS" 'BEGIN {
		why = ""
		if (d == "NA" || d + 0 == 0) why = why "; no delivery"
		if (lost != "NA" && lost + 0 > 0) why = why "; loss " lost
		if (lag != "NA" && lag + 0 >= laglim * 1000) why = why "; generator send lag p99 " lag "us"
		if (p99 != "NA" && p99 + 0 >= p99lim * 1000) why = why "; p99 " p99 "us"
		if (f + 0 > 0 || dr + 0 > 0) why = why "; " f " failed, " dr " dropped connections"
		print substr(why, 3) }'
}

# ---------------------------------------------------------------- one run
RUN_NO=0

# run_one PHASE KIND RATE REP WARMUP DURATION LIMIT: a fresh server, one generator run, one
# line in runs.tsv. Sets RUN_PASS (1/0 in saturation, - otherwise).
run_one() {
	local phase=$1 kind=$2 rate=$3 rep=$4 warmup=$5 duration=$6 limit=$7
	local port rel base rc=0 fig why=- server_note=-
	port=$(port_of "$kind")
	rel=$phase/$kind@$rate-r$rep
	base=$OUT/$rel
	mkdir -p "$OUT/$phase"
	RUN_NO=$((RUN_NO + 1))
	printf '[%d] %-10s %-8s @%-5s run %d: ' "$RUN_NO" "$phase" "$kind" "$rate/s" "$rep"

	start_server "$kind" "$base.server.log"
	timeout -k 5 "$limit" taskset -c "$CCPU" "$LOADGEN_BIN" relay --protocol socketcluster \
		--url "ws://$SERVER_ADDR:$port/socketcluster/" \
		--clients "$CLIENTS" --room-size "$CHANNEL" --rate "$rate" --payload "$PAYLOAD" \
		--duration "$duration" --warmup "$warmup" --drain "$DRAIN" \
		--cpus "$CCPU" --spin-us "$SPIN_US" --server-pid "$SERVER_PID" \
		--label "$kind @${rate}/s #$rep" --json "$base.json" \
		>"$base.txt" 2>"$base.progress" &
	LG_PID=$!
	wait "$LG_PID" || rc=$?
	LG_PID=
	kill -0 "$SERVER_PID" 2>/dev/null || server_note="the server exited during the run (see $rel.server.log)"
	stop_server "$port"
	((rc == 124 || rc == 137)) && server_note="the generator was stopped after ${limit} s"

	fig=
	[[ -f $base.json ]] && fig=$(figures "$base.json")
	RUN_PASS=-
	if [[ -z $fig ]]; then
		printf 'no report (exit %s, see %s.txt, %s.progress)\n' "$rc" "$rel" "$rel"
		[[ $phase == saturation ]] && RUN_PASS=0 why="no report"
	else
		local cpu p50 p99 p999 delivered expected dps lost lag failed dropped cores
		IFS=$'\t' read -r cpu p50 p99 p999 delivered expected dps lost lag failed dropped cores <<<"$fig"
		printf 'CPU %s us/deliv (%s%% of a core), p50 %s p99 %s p99.9 %s, delivered %s/%s (%s/s), loss %s, send lag p99 %s' \
			"$(awk -v v="$cpu" 'BEGIN {print (v == "NA") ? "n/a" : sprintf("%.2f", v)}')" \
			"$(awk -v v="$cores" 'BEGIN {print (v == "NA") ? "n/a" : sprintf("%.0f", v * 100)}')" \
			"$(us "$p50")" "$(us "$p99")" "$(us "$p999")" "$delivered" "$expected" \
			"$(awk -v v="$dps" 'BEGIN {printf "%.0f", v}')" "$lost" "$(us "$lag")"
		((failed + dropped > 0)) && printf ', %s failed, %s dropped connections' "$failed" "$dropped"
		if [[ $phase == saturation ]]; then
			why=$(step_failure "$cpu" "$p50" "$p99" "$p999" "$delivered" "$expected" "$dps" "$lost" "$lag" "$failed" "$dropped")
			if [[ -z $why ]]; then
				RUN_PASS=1 why=-
				printf ' [pass]'
			else
				RUN_PASS=0
				printf ' [fail: %s]' "$why"
			fi
		fi
		printf '\n'
	fi
	[[ $server_note != - ]] && note "$server_note"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$kind" "$rate" "$rep" "$rc" \
		"$rel.json" "$RUN_PASS" "$why" "$server_note" >>"$OUT/runs.tsv"
}

# ---------------------------------------------------------------- summary
# min-max of column C (1-based, of `figures`) over the runs of PHASE/KIND (/RATE).
range_of() { # phase kind rate column kind(us|f2|int)
	local phase=$1 kind=$2 rate=$3 col=$4 fmt=$5 json
	awk -F'\t' -v p="$phase" -v k="$kind" -v r="$rate" '$1 == p && $2 == k && $3 == r {print $6}' "$OUT/runs.tsv" |
		while IFS= read -r json; do
			[[ -f $OUT/$json ]] && figures "$OUT/$json" | cut -f"$col"
		done | awk -v fmt="$fmt" '
		function f(v) {
			if (fmt == "us") return (v < 1000) ? sprintf("%.0fus", v) : (v < 1e6) ? sprintf("%.2fms", v / 1000) : sprintf("%.2fs", v / 1e6)
			if (fmt == "f2") return sprintf("%.2f", v)
			return sprintf("%.0f", v)
		}
		$1 != "NA" && $1 != "" { v = $1 + 0; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++ }
		END { if (n == 0) print "n/a"; else if (f(lo) == f(hi)) print f(lo); else print f(lo) "-" f(hi) }'
}

summary() {
	local kind
	((COMPARE)) || {
		saturation_summary
		return 0
	}
	echo
	echo "== compare: $CLIENTS clients, channels of $CHANNEL, ${RATE} msg/s each, $PAYLOAD B, ${DURATION} s after ${WARMUP} s ($REPEAT run(s) per server; min-max)"
	printf '%-9s %-14s %-16s %-16s %-16s %-18s %-10s %-14s\n' server "CPU us/deliv" p50 p99 p99.9 deliveries/s loss "send lag p99"
	for kind in "${SERVER_LIST[@]}"; do
		printf '%-9s %-14s %-16s %-16s %-16s %-18s %-10s %-14s\n' "$kind" \
			"$(range_of compare "$kind" "$RATE" 1 f2)" "$(range_of compare "$kind" "$RATE" 2 us)" \
			"$(range_of compare "$kind" "$RATE" 3 us)" "$(range_of compare "$kind" "$RATE" 4 us)" \
			"$(range_of compare "$kind" "$RATE" 7 int)" "$(range_of compare "$kind" "$RATE" 8 int)" \
			"$(range_of compare "$kind" "$RATE" 9 us)"
	done
	if want_server corelay && want_server node; then
		local rep a b ratios=()
		for ((rep = 1; rep <= REPEAT; rep++)); do
			a=$OUT/compare/node@$RATE-r$rep.json b=$OUT/compare/corelay@$RATE-r$rep.json
			[[ -f $a && -f $b ]] || continue
			ratios+=("$(awk -v n="$(figures "$a" | cut -f1)" -v c="$(figures "$b" | cut -f1)" \
				'BEGIN {print (n == "NA" || c == "NA" || c + 0 == 0) ? "n/a" : sprintf("%.2f", n / c)}')")
		done
		((${#ratios[@]})) && echo "CPU per delivery, node / corelay, run by run: ${ratios[*]}"
	fi
	echo "CPU us/deliv: utime + stime of the server process over the measured window / deliveries (every"
	echo "subscriber's copy, the publisher's own included); send lag: the generator's pacing lag."
	saturation_summary
}

saturation_summary() {
	local kind
	((SATURATION)) || return 0
	echo
	echo "== saturation: rates ${SAT_RATE_LIST[*]} msg/s per client, ${SAT_DURATION} s after ${SAT_WARMUP} s; a step fails at loss,"
	echo "   generator send lag p99 >= ${SAT_LAG_MS} ms, p99 >= ${SAT_P99_MS} ms, a failed or dropped connection"
	printf '%-9s %-58s %s\n' server "highest passing step" "first failing step"
	for kind in "${SERVER_LIST[@]}"; do
		local best first
		best=$(awk -F'\t' -v k="$kind" '$1 == "saturation" && $2 == k && $7 == 1 {r = $3; j = $6} END {if (r != "") print r "\t" j}' "$OUT/runs.tsv")
		first=$(awk -F'\t' -v k="$kind" '$1 == "saturation" && $2 == k && $7 == 0 {print $3 "/s: " $8; exit}' "$OUT/runs.tsv")
		if [[ -n $best ]]; then
			local r j f
			IFS=$'\t' read -r r j <<<"$best"
			f=$(figures "$OUT/$j")
			best=$(awk -F'\t' -v r="$r" '{printf "%s/s: %.0f deliv/s, CPU %s us/deliv, p99 ", r, $7, ($1 == "NA") ? "n/a" : sprintf("%.2f", $1)}' <<<"$f")$(us "$(cut -f3 <<<"$f")")
		else
			best="none"
		fi
		printf '%-9s %-58s %s\n' "$kind" "$best" "${first:-none failed (within --sat-rates/--sat-max-steps/--sat-budget)}"
	done
}

# ---------------------------------------------------------------- phases
if ((COMPARE)); then
	echo
	echo "== compare"
	for ((rep = 1; rep <= REPEAT; rep++)); do
		for kind in "${SERVER_LIST[@]}"; do
			run_one compare "$kind" "$RATE" "$rep" "$WARMUP" "$DURATION" "$COMPARE_LIMIT"
		done
	done
fi

if ((SATURATION)); then
	echo
	echo "== saturation"
	sat_start=$SECONDS
	racing=("${SERVER_LIST[@]}")
	for rate in "${SAT_RATE_LIST[@]}"; do
		((${#racing[@]})) || break
		next=()
		for kind in "${racing[@]}"; do
			if ((SECONDS - sat_start >= SAT_BUDGET)); then
				note "saturation budget of ${SAT_BUDGET} s spent: no further step"
				next=()
				break
			fi
			run_one saturation "$kind" "$rate" 1 "$SAT_WARMUP" "$SAT_DURATION" "$SAT_LIMIT"
			[[ $RUN_PASS == 1 ]] && next+=("$kind")
		done
		racing=("${next[@]}")
	done
fi

summary | tee "$OUT/summary.txt"
echo
echo "runs: $OUT/runs.tsv; tables: $OUT/summary.txt"
