#!/usr/bin/env bash
# Side-by-side relay benchmark: corelay (native /ws and socket.io /socket.io/), socketioxide
# (loadgen/peers/socketioxide) and Node socket.io (loadgen/reference), each on one pinned
# CPU, driven by corelay-loadgen pinned to another. See loadgen/README.md, "Peers".
#
#   scripts/bench-peers.sh                                   # every scenario, every server
#   scripts/bench-peers.sh --scenario rates --rates 10 --duration 5 --warmup 2
#   scripts/bench-peers.sh --scenario hot,saturation --repeat 3 --perf
#   scripts/bench-peers.sh --help
#
# Every server runs as a fresh process per run, pinned with `taskset -c SERVER_CPU`; the
# generator runs with `taskset -c CLIENT_CPU ... --cpus CLIENT_CPU --spin-us N`. Each run's
# JSON report, stdout, progress and server log go to the output directory, with runs.tsv
# indexing them; one table per scenario is printed (and saved in summary.txt), and one
# latency plot per scenario (per rate for `rates`) is drawn with `corelay-loadgen plot`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
	cat <<'EOF'
usage: scripts/bench-peers.sh [options]

What to run
  --scenario LIST        rates,many,hot,saturation,idle or all (default: all)
  --servers LIST         corelay-native,corelay-sio,socketioxide,node (default: all four)
  --repeat N             run each (server, scenario step) N times; tables show min-max (1)
  --duration S           measured seconds of every loadgen run (10)
  --warmup S             warm-up seconds before the window (3)
  --drain S              longest wait for in-flight messages after the last send (2)
  --payload B            payload bytes of the relay scenarios (64)
  --rates LIST           `rates`: msg/s per client (10,20,40,80); 1,000 clients, rooms of 10
  --rates-clients N      `rates`: clients (1000)
  --many-clients N       `many`: clients (8000), rooms of 10 at --many-rate (1.5)
  --hot-clients N        `hot`: clients (200), rooms of --hot-room-size (50) at --hot-rate (20)
  --sat-rates LIST       `saturation`: rates tried in order until one fails
                         (2,5,10,15,20,25,30,40,50,60,80,100,120); 1,000 clients, rooms of 10
  --sat-p99-ms MS        `saturation`: a step fails when p99 >= MS (10), anything is lost,
                         or a connection failed or dropped
  --idle-clients N       `idle`: idle connections, each joined to a room of 10 (15000, max 15000)

Where
  --server-cpu N         CPU of the server (0)
  --client-cpu N         CPU of the load generator (1)
  --spin-us N            generator spins N us after its last send or arrival before it
                         sleeps (100000: never sleeps under load)
  --out DIR              output directory (target/bench-peers/<date>); reusing one adds
                         the new runs to its tables and plots (runs.tsv is appended)
  --server-addr IP       address the servers listen on and the generator connects to
                         (127.0.0.1)
  --server-ns NAME       run the servers inside network namespace NAME (ip netns exec)
  --client-ns NAME       run the load generator inside network namespace NAME
  --corelay-port P       (7700)   --sioxide-port P (3001)   --node-port P (3000)
  --start-timeout S      longest wait for a server's port (15)

Builds
  --build                cargo build --release corelay and corelay-loadgen first (root
                         workspace); without it the existing target/release binaries are used
  --corelay-bin PATH     corelay binary (target/release/corelay)
  --loadgen-bin PATH     corelay-loadgen binary (target/release/corelay-loadgen)
  --corelay-env 'K=V ..' environment for corelay, e.g. 'CORELAY_SPIN_BEFORE_PARK_US=50'
                         (repeatable)
  --corelay-args '...'   extra `corelay serve` flags (repeatable)
  --corelay-loadgen-args '...'
                         extra load generator flags for the corelay servers only, e.g.
                         '--token JWT' (repeatable)
  --tag NAME             appended to the corelay servers' names: corelay-native[NAME];
                         with the same --out, two builds end up side by side in one table
  --no-npm               skip `npm ci` in loadgen/reference (node_modules must exist)

Measurement
  --perf                 perf stat (task-clock, context switches, migrations,
                         raw_syscalls:sys_enter) on the server over each measured window;
                         adds syscalls and context switches per delivery to the tables
  --report DIR           print the tables and draw the plots of DIR again, run nothing
  -h, --help             this text
EOF
}

die() {
	echo "bench-peers: $*" >&2
	exit 2
}
note() { echo "bench-peers: $*" >&2; }

# ---------------------------------------------------------------- options
SCENARIOS=all
SERVERS=corelay-native,corelay-sio,socketioxide,node
REPEAT=1
DURATION=10
WARMUP=3
DRAIN=2
PAYLOAD=64
RATES=10,20,40,80
RATES_CLIENTS=1000
MANY_CLIENTS=8000
MANY_RATE=1.5
HOT_CLIENTS=200
HOT_ROOM=50
HOT_RATE=20
SAT_RATES=2,5,10,15,20,25,30,40,50,60,80,100,120
SAT_P99_MS=10
IDLE_CLIENTS=15000
SCPU=0
CCPU=1
SPIN_US=100000
OUT=
SERVER_ADDR=127.0.0.1
SERVER_NS=
CLIENT_NS=
CORELAY_PORT=7700
SIOXIDE_PORT=3001
NODE_PORT=3000
START_TIMEOUT=15
BUILD=0
CORELAY_BIN=$ROOT/target/release/corelay
LOADGEN_BIN=$ROOT/target/release/corelay-loadgen
CORELAY_ENV=()
# Every generated client comes from one address, and a benchmark opens up to 15,000 of
# them at once: the per-address admission limits, made for the public, are lifted (before
# --corelay-env, which may set them again). The per-connection message rates are raised
# above the fastest step of `saturation` (120 msg/s per client), still checked on every
# message so their cost is measured.
BENCH_LIMITS=(CORELAY_MAX_CONNECTIONS_PER_IP=1000000 CORELAY_ENGINEIO_MAX_SESSIONS_PER_IP=1000000
	CORELAY_ENGINEIO_HANDSHAKE_RATE=1000000
	CORELAY_RATE_LIMITS_NATIVE_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_NATIVE_MESSAGES_BURST=100000
	CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_PER_S=100000 CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_BURST=100000)
CORELAY_ARGS=()
CORELAY_LOADGEN_ARGS=()
TAG=
NPM=1
PERF=0
REPORT_ONLY=
ARGS_GIVEN=("$@")

need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
	case $1 in
	--scenario | --scenarios) need "$@"; SCENARIOS=$2; shift ;;
	--servers) need "$@"; SERVERS=$2; shift ;;
	--repeat) need "$@"; REPEAT=$2; shift ;;
	--duration) need "$@"; DURATION=$2; shift ;;
	--warmup) need "$@"; WARMUP=$2; shift ;;
	--drain) need "$@"; DRAIN=$2; shift ;;
	--payload) need "$@"; PAYLOAD=$2; shift ;;
	--rates) need "$@"; RATES=$2; shift ;;
	--rates-clients) need "$@"; RATES_CLIENTS=$2; shift ;;
	--many-clients) need "$@"; MANY_CLIENTS=$2; shift ;;
	--many-rate) need "$@"; MANY_RATE=$2; shift ;;
	--hot-clients) need "$@"; HOT_CLIENTS=$2; shift ;;
	--hot-room-size) need "$@"; HOT_ROOM=$2; shift ;;
	--hot-rate) need "$@"; HOT_RATE=$2; shift ;;
	--sat-rates) need "$@"; SAT_RATES=$2; shift ;;
	--sat-p99-ms) need "$@"; SAT_P99_MS=$2; shift ;;
	--idle-clients) need "$@"; IDLE_CLIENTS=$2; shift ;;
	--server-cpu) need "$@"; SCPU=$2; shift ;;
	--client-cpu) need "$@"; CCPU=$2; shift ;;
	--spin-us) need "$@"; SPIN_US=$2; shift ;;
	--out) need "$@"; OUT=$2; shift ;;
	--server-addr) need "$@"; SERVER_ADDR=$2; shift ;;
	--server-ns) need "$@"; SERVER_NS=$2; shift ;;
	--client-ns) need "$@"; CLIENT_NS=$2; shift ;;
	--corelay-port) need "$@"; CORELAY_PORT=$2; shift ;;
	--sioxide-port) need "$@"; SIOXIDE_PORT=$2; shift ;;
	--node-port) need "$@"; NODE_PORT=$2; shift ;;
	--start-timeout) need "$@"; START_TIMEOUT=$2; shift ;;
	--build) BUILD=1 ;;
	--corelay-bin) need "$@"; CORELAY_BIN=$2; shift ;;
	--loadgen-bin) need "$@"; LOADGEN_BIN=$2; shift ;;
	--corelay-env)
		need "$@"
		read -ra kv <<<"$2"
		CORELAY_ENV+=("${kv[@]}")
		shift
		;;
	--corelay-args)
		need "$@"
		read -ra kv <<<"$2"
		CORELAY_ARGS+=("${kv[@]}")
		shift
		;;
	--corelay-loadgen-args)
		need "$@"
		read -ra kv <<<"$2"
		CORELAY_LOADGEN_ARGS+=("${kv[@]}")
		shift
		;;
	--tag) need "$@"; TAG=$2; shift ;;
	--no-npm) NPM=0 ;;
	--perf) PERF=1 ;;
	--report) need "$@"; REPORT_ONLY=$2; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in REPEAT SCPU CCPU SPIN_US CORELAY_PORT SIOXIDE_PORT NODE_PORT RATES_CLIENTS \
	MANY_CLIENTS HOT_CLIENTS HOT_ROOM IDLE_CLIENTS PAYLOAD START_TIMEOUT; do
	is_uint "${!v}" || die "${v,,} must be a whole number, not '${!v}'"
done
for v in DURATION WARMUP DRAIN MANY_RATE HOT_RATE SAT_P99_MS; do
	is_num "${!v}" || die "${v,,} must be a number, not '${!v}'"
done
((REPEAT >= 1)) || die "--repeat must be at least 1"
[[ $SCPU != "$CCPU" ]] || die "--server-cpu and --client-cpu must differ"
((IDLE_CLIENTS <= 15000)) || die "--idle-clients at most 15000 (20,000 open files per process here)"
[[ $SCENARIOS == all ]] && SCENARIOS=rates,many,hot,saturation,idle
IFS=, read -ra SCENARIO_LIST <<<"$SCENARIOS"
IFS=, read -ra SERVER_LIST <<<"$SERVERS"
IFS=, read -ra RATE_LIST <<<"$RATES"
IFS=, read -ra SAT_RATE_LIST <<<"$SAT_RATES"
for s in "${SCENARIO_LIST[@]}"; do
	case $s in rates | many | hot | saturation | idle) ;; *) die "unknown scenario '$s'" ;; esac
done
for s in "${SERVER_LIST[@]}"; do
	case $s in corelay-native | corelay-sio | socketioxide | node) ;; *) die "unknown server '$s'" ;; esac
done
for r in "${RATE_LIST[@]}" "${SAT_RATE_LIST[@]}"; do is_num "$r" || die "bad rate '$r'"; done
[[ -z $TAG || $TAG =~ ^[A-Za-z0-9._+-]+$ ]] || die "--tag: letters, digits and ._+- only"

# Network namespaces: `ip netns exec NAME` in front of server / generator commands.
SNS_EXEC=()
CNS_EXEC=()
[[ -n $SERVER_NS ]] && SNS_EXEC=(ip netns exec "$SERVER_NS")
[[ -n $CLIENT_NS ]] && CNS_EXEC=(ip netns exec "$CLIENT_NS")

# Display name of a server (the tag marks corelay builds).
server_name() {
	case $1 in
	corelay-*) echo "$1${TAG:+[$TAG]}" ;;
	*) echo "$1" ;;
	esac
}

# ---------------------------------------------------------------- tables
# Pure functions of the output directory: runs.tsv and the JSON reports it names.

# One TSV row of figures from a report: dps cpu_us p50 p99 p999 lost rss_peak_kib lag_p99
# genflag established clients failed dropped rss_per_conn rss_start rss_end hs_p99 cpu_cores
# (NA where absent). genflag: 1 late sends (pacing lag p99 > 1 ms), 2 generator CPU > 90%.
json_row() {
	jq -r '
	  def na: if . == null then "NA" else tostring end;
	  [ .messages.delivered_per_s,
	    (if .server != null and .messages.delivered > 0
	       then .server.cpu_s * 1e6 / .messages.delivered else null end),
	    .latency.p50_us, .latency.p99_us, .latency.p999_us,
	    .messages.lost,
	    .server.rss_peak_kib,
	    .pacing_lag.p99_us,
	    ((if any(.warnings[]; test("generator sent late")) then 1 else 0 end)
	     + (if any(.warnings[]; test("generator used")) then 2 else 0 end)),
	    .connections.established, .settings.clients,
	    .connections.failed, .connections.dropped,
	    .server.rss_per_connection_bytes,
	    .server.rss_start_kib, .server.rss_end_kib,
	    .handshake.p99_us,
	    .server.cpu_cores
	  ] | map(na) | @tsv' "$1" 2>/dev/null
}

# Prints the table of one scenario from DIR/runs.tsv.
print_table() {
	local dir=$1 scenario=$2
	local rows
	rows=$(awk -F'\t' -v s="$scenario" '$1 == s' "$dir/runs.tsv" 2>/dev/null) || true
	[[ -n $rows ]] || return 0
	local perf_cols=0
	if awk -F'\t' '$7 != "-" || $8 != "-" {found=1} END {exit !found}' <<<"$rows"; then
		perf_cols=1
	fi
	# Joined rows: server step rep rc pass sys cs note | json figures...
	local joined=""
	local server step rep rc json sys cs pass note fig
	while IFS=$'\t' read -r _ server step rep rc json sys cs pass note; do
		fig=""
		[[ -f $dir/$json ]] && fig=$(json_row "$dir/$json")
		[[ -n $fig ]] || fig=FAILED
		joined+="$server"$'\t'"$step"$'\t'"$rep"$'\t'"$rc"$'\t'"$pass"$'\t'"$sys"$'\t'"$cs"$'\t'"$note"$'\t'"$fig"$'\n'
	done <<<"$rows"
	printf '%s' "$joined" | awk -F'\t' -v scenario="$scenario" -v perf="$perf_cols" \
		-v sat_limit="${SAT_P99_MS}" -f <(table_awk) | sed 's/ *$//'
}

# The awk program behind print_table (mawk-compatible).
table_awk() {
	cat <<'AWK'
function commas(n,   s, r) {
	s = sprintf("%.0f", n); r = ""
	while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
	return s r
}
function us(v) {
	if (v < 1000) return sprintf("%.0fus", v)
	if (v < 10000) return sprintf("%.2fms", v / 1000)
	if (v < 1000000) return sprintf("%.1fms", v / 1000)
	return sprintf("%.2fs", v / 1000000)
}
function fmt(kind, v) {
	if (v == "NA" || v == "") return "n/a"
	if (kind == "int") return commas(v)
	if (kind == "us") return us(v)
	if (kind == "f2") return sprintf("%.2f", v)
	if (kind == "f3") return sprintf("%.3f", v)
	if (kind == "f1") return sprintf("%.1f", v)
	if (kind == "mib") return sprintf("%.1f", v / 1024)
	if (kind == "pct") return sprintf("%.0f%%", v * 100)
	return v
}
# Range of column c over the group's runs: one value, or min-max.
function range(g, c, kind,   i, v, lo, hi, n, a, b) {
	n = 0
	for (i = 1; i <= cnt[g]; i++) {
		v = val[g, i, c]
		if (v == "NA" || v == "") continue
		v += 0
		if (n == 0 || v < lo) lo = v
		if (n == 0 || v > hi) hi = v
		n++
	}
	if (n == 0) return "n/a"
	a = fmt(kind, lo); b = fmt(kind, hi)
	return (a == b) ? a : a "-" b
}
function flag(g,   i, n, lag, cpu, s, f) {
	n = 0; lag = 0; cpu = 0
	for (i = 1; i <= cnt[g]; i++) {
		f = val[g, i, 9]
		if (f == "NA" || f == "") continue
		n++
		if (f % 2 == 1) lag++
		if (f >= 2) cpu++
	}
	s = ""
	if (lag > 0) s = "LAG" (cnt[g] > 1 ? " " lag "/" cnt[g] : "")
	if (cpu > 0) s = s (s == "" ? "" : ",") "CPU" (cnt[g] > 1 ? " " cpu "/" cnt[g] : "")
	return s == "" ? "-" : s
}
function cell(s, w) { return sprintf("%-" w "s", s) }
BEGIN { ng = 0 }
{
	key = $1 SUBSEP $2
	if (!(key in gi)) { ng++; gi[key] = ng; gserver[ng] = $1; gstep[ng] = $2; cnt[ng] = 0 }
	g = gi[key]; k = ++cnt[g]
	rc[g, k] = $4; pass[g, k] = $5; repof[g, k] = $3; if ($3 + 0 > maxrep) maxrep = $3 + 0; sys[g, k] = $6; cs[g, k] = $7
	if ($9 == "FAILED") { failed[g]++; nfail++; fnote[nfail] = $1 (($2 != "-") ? " @" $2 "/s" : "") " run " $3 ": no report (exit " $4 ", see its .txt/.progress)"; k--; cnt[g] = k; next }
	for (c = 9; c <= NF; c++) val[g, k, c - 8] = $c
	val[g, k, 19] = $6; val[g, k, 20] = $7
	if ($8 != "" && $8 != "-") { nn++; notes[nn] = $1 (($2 != "-") ? " @" $2 "/s" : "") " run " $3 ": " $8 }
	# figure k of json_row is field 8 + k: 12 failed, 13 dropped connections
	if ($(8 + 12) > 0 || $(8 + 13) > 0) { nn++; notes[nn] = $1 (($2 != "-") ? " @" $2 "/s" : "") " run " $3 ": " $(8 + 12) " connection(s) failed, " $(8 + 13) " dropped" }
}
END {
	if (scenario == "idle") {
		h = sprintf("%-24s %-13s %-12s %-12s %-16s %-10s", "server", "connections", "RSS before", "RSS held", "RSS per conn", "handshake")
		print h
		print sprintf("%-24s %-13s %-12s %-12s %-16s %-10s", "", "established", "MiB", "MiB", "bytes", "p99")
		for (g = 1; g <= ng; g++) {
			if (cnt[g] == 0) { print cell(gserver[g], 24) " FAILED"; continue }
			print cell(gserver[g], 24) " " cell(range(g, 10, "int"), 13) " " cell(range(g, 15, "mib"), 12) " " \
				cell(range(g, 16, "mib"), 12) " " cell(range(g, 14, "int"), 16) " " cell(range(g, 17, "us"), 10)
		}
	} else if (scenario == "saturation") {
		# Per server: the highest passing step of each run (runs are numbered per step).
		hdr = sprintf("%-24s %-18s %-10s %-16s %-16s %-12s %-30s", "server", "best deliveries/s", "at rate", "p99 there", "CPU us/deliv", "gen limit", "first failing step")
		print hdr
		ns = 0
		for (g = 1; g <= ng; g++) if (!(gserver[g] in sidx)) { ns++; sidx[gserver[g]] = ns; sname[ns] = gserver[g] }
		for (s = 1; s <= ns; s++) {
			bmin = ""; bmax = ""; rmin = ""; rmax = ""; p99lo = ""; p99hi = ""; culo = ""; cuhi = ""; fails = ""; gl = "-"; nf = 0
			for (r = 1; r <= maxrep; r++) {
				best = -1; bg = 0; bk = 0; fail = ""; seen = 0
				for (g = 1; g <= ng; g++) {
					if (gserver[g] != sname[s]) continue
					for (k = 1; k <= cnt[g]; k++) {
						if (repof[g, k] != r) continue
						seen = 1
						if (pass[g, k] == "1") { if (val[g, k, 1] + 0 > best) { best = val[g, k, 1] + 0; bg = g; bk = k } }
						else if (pass[g, k] == "0" && fail == "") {
							# every condition of the pass test (run_one) that the step missed
							why = ""
							if (val[g, k, 4] + 0 >= sat_limit * 1000) why = why ", p99 " us(val[g, k, 4])
							if (val[g, k, 6] + 0 > 0) why = why ", loss " val[g, k, 6]
							if (val[g, k, 12] + 0 > 0) why = why ", " val[g, k, 12] " conn failed"
							if (val[g, k, 13] + 0 > 0) why = why ", " val[g, k, 13] " conn dropped"
							if (val[g, k, 1] + 0 <= 0) why = why ", no deliveries"
							fail = substr(why, 3) " @" gstep[g] "/s"
							if (val[g, k, 9] % 2 == 1) fail = fail " (gen LAG)"
						}
					}
				}
				if (!seen) continue
				if (bg > 0) {
					if (bmin == "" || best < bmin) bmin = best
					if (bmax == "" || best > bmax) bmax = best
					rate = gstep[bg] + 0
					if (rmin == "" || rate < rmin) rmin = rate
					if (rmax == "" || rate > rmax) rmax = rate
					p = val[bg, bk, 4] + 0; if (p99lo == "" || p < p99lo) p99lo = p; if (p99hi == "" || p > p99hi) p99hi = p
					cu = val[bg, bk, 2]; if (cu != "NA") { cu += 0; if (culo == "" || cu < culo) culo = cu; if (cuhi == "" || cu > cuhi) cuhi = cu }
					if (val[bg, bk, 9] % 2 == 1) gl = "LAG"
				}
				nf++; failof[nf] = (fail == "" ? "none (last rate passed)" : fail)
			}
			# one entry when every run stopped at the same step for the same reason
			fails = failof[1]
			for (i = 2; i <= nf; i++) if (failof[i] != failof[1]) { fails = ""; break }
			if (fails == "") for (i = 1; i <= nf; i++) fails = fails (i > 1 ? "; " : "") "run " i ": " failof[i]
			nf = 0
			b = (bmin == "") ? "none passed" : ((fmt("int", bmin) == fmt("int", bmax)) ? fmt("int", bmin) : fmt("int", bmin) "-" fmt("int", bmax))
			rr = (rmin == "") ? "-" : ((rmin == rmax) ? rmin "/s" : rmin "-" rmax "/s")
			pp = (p99lo == "") ? "-" : ((us(p99lo) == us(p99hi)) ? us(p99lo) : us(p99lo) "-" us(p99hi))
			cc = (culo == "") ? "-" : ((sprintf("%.2f", culo) == sprintf("%.2f", cuhi)) ? sprintf("%.2f", culo) : sprintf("%.2f-%.2f", culo, cuhi))
			print cell(sname[s], 24) " " cell(b, 18) " " cell(rr, 10) " " cell(pp, 16) " " cell(cc, 16) " " cell(gl, 12) " " fails
		}
		print "(a step passes with p99 < " sat_limit " ms, at least one delivery, no loss and no failed or dropped connection; the steps of every run are in runs.tsv)"
	} else {
		w = "%-24s %-6s %-16s %-12s %-16s %-16s %-16s %-10s %-11s %-14s %-9s"
		h = sprintf(w, "server", "rate", "deliveries/s", "CPU us", "p50", "p99", "p99.9", "loss", "RSS MiB", "gen lag p99", "gen limit")
		h2 = sprintf(w, "", "/s", "", "per deliv", "", "", "", "", "(peak)", "", "")
		if (perf) { h = h sprintf(" %-14s %-14s", "syscalls", "ctx switches"); h2 = h2 sprintf(" %-14s %-14s", "per deliv", "per deliv") }
		print h; print h2
		for (g = 1; g <= ng; g++) {
			st = (gstep[g] == "-") ? "-" : gstep[g]
			if (cnt[g] == 0) { print cell(gserver[g], 24) " " cell(st, 6) " FAILED"; continue }
			line = cell(gserver[g], 24) " " cell(st, 6) " " cell(range(g, 1, "int"), 16) " " cell(range(g, 2, "f2"), 12) " " \
				cell(range(g, 3, "us"), 16) " " cell(range(g, 4, "us"), 16) " " cell(range(g, 5, "us"), 16) " " \
				cell(range(g, 6, "int"), 10) " " cell(range(g, 7, "mib"), 11) " " cell(range(g, 8, "us"), 14) " " cell(flag(g), 9)
			if (perf) line = line " " cell(range(g, 19, "f3"), 14) " " cell(range(g, 20, "f3"), 14)
			print line
		}
	}
	for (i = 1; i <= nfail; i++) print "FAILED: " fnote[i]
	for (i = 1; i <= nn; i++) print "note: " notes[i]
}
AWK
}

# Title line of a scenario's table.
scenario_title() {
	local runs
	runs=$(awk -F'\t' -v s="$1" '$1 == s {n++} END {print n + 0}' "$2/runs.tsv")
	case $1 in
	rates) echo "rates: ${RATES_CLIENTS} clients in rooms of 10, ${PAYLOAD} B, per-client rate as listed" ;;
	many) echo "many: ${MANY_CLIENTS} clients in rooms of 10 at ${MANY_RATE} msg/s, ${PAYLOAD} B" ;;
	hot) echo "hot: ${HOT_CLIENTS} clients in rooms of ${HOT_ROOM} at ${HOT_RATE} msg/s, ${PAYLOAD} B" ;;
	saturation) echo "saturation: 1000 clients in rooms of 10, ${PAYLOAD} B, rate stepped up until p99 >= ${SAT_P99_MS} ms, loss or a failed or dropped connection" ;;
	idle) echo "idle: ${IDLE_CLIENTS} idle connections, each joined to a room of 10" ;;
	esac | sed "s/\$/ ($runs runs; ${DURATION} s measured after ${WARMUP} s warm-up)/"
}

table_footer() {
	[[ $1 == idle ]] && return 0
	echo "CPU us per deliv = server CPU time over the window / deliveries; gen limit: LAG = the generator's"
	echo "pacing lag p99 > 1 ms (it sent late: latencies include its delay), CPU = it used > 90% of its core"
	echo "(not reported when it busy-polls with --spin-us: its CPU use is then ~100% by design)."
}

# Overlay plots: one per scenario; per rate for `rates`; the best passing step of each
# server and run for `saturation`.
draw_plots() {
	local dir=$1 scenario=$2 files step
	[[ -x $LOADGEN_BIN ]] || return 0
	case $scenario in
	rates)
		while IFS= read -r step; do
			mapfile -t files < <(awk -F'\t' -v st="$step" -v d="$dir" '$1 == "rates" && $3 == st && $5 == 0 {print d "/" $6}' "$dir/runs.tsv")
			plot_files "$dir/rates-${step}.svg" "${files[@]}"
		done < <(awk -F'\t' '$1 == "rates" && !seen[$3]++ {print $3}' "$dir/runs.tsv")
		;;
	saturation)
		mapfile -t files < <(awk -F'\t' -v d="$dir" '$1 == "saturation" && $9 == 1 {k = $2 SUBSEP $4; best[k] = d "/" $6} END {for (k in best) print best[k]}' "$dir/runs.tsv" | sort)
		plot_files "$dir/saturation.svg" "${files[@]}"
		;;
	*)
		mapfile -t files < <(awk -F'\t' -v s="$scenario" -v d="$dir" '$1 == s && $5 == 0 {print d "/" $6}' "$dir/runs.tsv")
		plot_files "$dir/$scenario.svg" "${files[@]}"
		;;
	esac
}

plot_files() {
	local out=$1
	shift
	local existing=() f
	for f in "$@"; do [[ -f $f ]] && existing+=("$f"); done
	((${#existing[@]} > 0)) || return 0
	if "$LOADGEN_BIN" plot --out "$out" "${existing[@]}" >/dev/null 2>"$out.err"; then
		rm -f "$out.err"
		echo "plot: $out"
	else
		note "plot $out failed: $(cat "$out.err")"
	fi
}

report() {
	local dir=$1 scenario
	[[ -f $dir/runs.tsv ]] || die "$dir/runs.tsv: no runs there"
	for scenario in rates many hot saturation idle; do
		awk -F'\t' -v s="$scenario" '$1 == s {f=1} END {exit !f}' "$dir/runs.tsv" || continue
		{
			echo
			echo "== $(scenario_title "$scenario" "$dir")"
			print_table "$dir" "$scenario"
			table_footer "$scenario"
		} | tee -a "$dir/summary.txt"
		draw_plots "$dir" "$scenario"
	done
}

if [[ -n $REPORT_ONLY ]]; then
	command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
	# shellcheck source=/dev/null
	[[ -f $REPORT_ONLY/settings.env ]] && source "$REPORT_ONLY/settings.env"
	: >"$REPORT_ONLY/summary.txt"
	report "$REPORT_ONLY"
	exit 0
fi

# ---------------------------------------------------------------- processes
SERVER_PID=
LG_PID=
PERF_PID=
WORK=$(mktemp -d /tmp/bench-peers.XXXXXX)

# shellcheck source=scripts/lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$PERF_PID" 1
	stop_pid "$LG_PID" 3
	stop_pid "$SERVER_PID" 3
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

# ---------------------------------------------------------------- preparation
[[ $(id -u) == 0 || -z $SERVER_NS$CLIENT_NS ]] || die "network namespaces need root"
command -v taskset >/dev/null || die "taskset is needed (util-linux)"
command -v ss >/dev/null || die "ss is needed (iproute2)"
if ! command -v jq >/dev/null; then
	note "installing jq"
	if ! { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }; then
		die "jq is needed (apt-get install jq)"
	fi
fi
ncpu=$(nproc --all)
((SCPU < ncpu && CCPU < ncpu)) || die "--server-cpu/--client-cpu must be below $ncpu"

# One file per client: raise the soft limit to the hard one (the servers inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

want_server() {
	local s
	for s in "${SERVER_LIST[@]}"; do [[ $s == "$1" ]] && return 0; done
	return 1
}
want_scenario() {
	local s
	for s in "${SCENARIO_LIST[@]}"; do [[ $s == "$1" ]] && return 0; done
	return 1
}

cd "$ROOT"
if ((BUILD)); then
	note "building corelay and corelay-loadgen (release, root workspace)"
	cargo build --release -p corelay --bin corelay -p corelay-loadgen --bin corelay-loadgen
fi
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN is missing: pass --build or --loadgen-bin"
if want_server corelay-native || want_server corelay-sio; then
	[[ -x $CORELAY_BIN ]] || die "$CORELAY_BIN is missing: pass --build or --corelay-bin"
fi
SIOXIDE_DIR=$ROOT/loadgen/peers/socketioxide
SIOXIDE_BIN=$SIOXIDE_DIR/target/release/socketioxide-relay
if want_server socketioxide; then
	note "building loadgen/peers/socketioxide (release, its own workspace and target dir)"
	CARGO_TARGET_DIR=$SIOXIDE_DIR/target cargo build --release --locked --quiet \
		--manifest-path "$SIOXIDE_DIR/Cargo.toml"
fi
if want_server node; then
	command -v node >/dev/null || die "node is needed for --servers node"
	if ((NPM)); then
		note "npm ci in loadgen/reference"
		(cd loadgen/reference && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
	fi
	[[ -d loadgen/reference/node_modules/socket.io ]] || die "loadgen/reference/node_modules is missing (npm ci)"
fi
if ((PERF)) && ! command -v perf >/dev/null; then
	note "perf is missing: apt-get install linux-perf"
	{ apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; } ||
		note "could not install perf: continuing without --perf"
	command -v perf >/dev/null || PERF=0
fi
if ((PERF)) && [[ ! -d /sys/kernel/tracing/events ]] && [[ ! -d /sys/kernel/debug/tracing/events ]]; then
	if mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; then
		note "mounted tracefs on /sys/kernel/tracing (for raw_syscalls:sys_enter)"
	else
		note "tracefs is not mounted and could not be: syscalls will read n/a"
	fi
fi

[[ -n $OUT ]] || OUT=$ROOT/target/bench-peers/$(date +%Y%m%d-%H%M%S)${SERVER_NS:+-netns}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
touch "$OUT/runs.tsv"
# Settings the tables need when printed again with --report.
declare -p RATES_CLIENTS MANY_CLIENTS MANY_RATE HOT_CLIENTS HOT_ROOM HOT_RATE SAT_P99_MS \
	IDLE_CLIENTS PAYLOAD DURATION WARMUP | sed 's/^declare -- //' >"$OUT/settings.env"

{
	echo "# bench-peers $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "args: ${ARGS_GIVEN[*]}"
	echo "host: $(uname -srm), $ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
	echo "server cpu $SCPU, generator cpu $CCPU, spin ${SPIN_US} us, addr $SERVER_ADDR${SERVER_NS:+, server netns $SERVER_NS}${CLIENT_NS:+, client netns $CLIENT_NS}, nofile $NOFILE"
	echo "loadgen: $LOADGEN_BIN ($("$LOADGEN_BIN" --version 2>/dev/null))"
	if want_server corelay-native || want_server corelay-sio; then
		echo "corelay: $CORELAY_BIN ($("$CORELAY_BIN" --version 2>/dev/null), built $(date -u -r "$CORELAY_BIN" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$CORELAY_BIN" | cut -c1-12))${TAG:+ tag $TAG}"
		echo "corelay env: ${BENCH_LIMITS[*]} ${CORELAY_ENV[*]}; extra flags: ${CORELAY_ARGS[*]:-none}"
	fi
	if want_server socketioxide; then
		echo "socketioxide: $(awk '/^name = "socketioxide"$/ {getline; print $3}' "$SIOXIDE_DIR/Cargo.lock" | tr -d '"'), tokio $(awk '/^name = "tokio"$/ {getline; print $3}' "$SIOXIDE_DIR/Cargo.lock" | tr -d '"'), axum $(awk '/^name = "axum"$/ {getline; print $3}' "$SIOXIDE_DIR/Cargo.lock" | tr -d '"')"
	fi
	if want_server node; then
		echo "node: $(node --version), socket.io $(jq -r .version loadgen/reference/node_modules/socket.io/package.json)"
	fi
} | tee -a "$OUT/env.txt"
echo "output: $OUT"

# ---------------------------------------------------------------- servers
port_of() {
	case $1 in
	corelay-*) echo "$CORELAY_PORT" ;;
	socketioxide) echo "$SIOXIDE_PORT" ;;
	node) echo "$NODE_PORT" ;;
	esac
}

listening() { # port: is something listening on it (in the server's namespace)?
	"${SNS_EXEC[@]}" ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# start_server KIND LOGFILE: a fresh pinned server; sets SERVER_PID.
start_server() {
	local kind=$1 log=$2 port cmd=() envs=() i
	port=$(port_of "$kind")
	if listening "$port"; then
		die "port $port is busy${SERVER_NS:+ in netns $SERVER_NS}: $("${SNS_EXEC[@]}" ss -Hltnp "sport = :$port" | head -1 | tr -s ' ')"
	fi
	case $kind in
	corelay-*)
		envs=("${BENCH_LIMITS[@]}" "${CORELAY_ENV[@]}")
		cmd=("$CORELAY_BIN" serve --listen "$SERVER_ADDR:$port" --shards 1 --cpus "$SCPU" "${CORELAY_ARGS[@]}")
		;;
	socketioxide)
		envs=(PORT="$port" HOST="$SERVER_ADDR")
		cmd=("$SIOXIDE_BIN")
		;;
	node)
		envs=(PORT="$port" HOST="$SERVER_ADDR")
		cmd=(node "$ROOT/loadgen/reference/socketio-relay.js")
		;;
	esac
	# ip netns exec, env and taskset all exec: $! is the server itself.
	"${SNS_EXEC[@]}" env "${envs[@]}" taskset -c "$SCPU" "${cmd[@]}" >"$log" 2>&1 &
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

# ---------------------------------------------------------------- one run
RUN_NO=0

# perf_counts FILE: "task_ms ctxsw syscalls" (NA for a counter perf could not read).
perf_counts() {
	awk -F, '
		/^#/ || NF < 3 {next}
		{ v = ($1 ~ /^[0-9.]+$/) ? $1 : "NA" }
		$3 == "task-clock" {t = v} $3 == "context-switches" {c = v} $3 ~ /sys_enter/ {s = v}
		END {print (t == "" ? "NA" : t), (c == "" ? "NA" : c), (s == "" ? "NA" : s)}' "$1"
}

# run_one SCENARIO SERVER STEP REP SUBCOMMAND ARGS...: one fresh server, one loadgen run,
# one line in runs.tsv. Sets RUN_JSON (relative to $OUT) and RUN_RC.
run_one() {
	local scenario=$1 kind=$2 step=$3 rep=$4 sub=$5
	shift 5
	local name port proto path base label rel limit clients=0 a
	name=$(server_name "$kind")
	port=$(port_of "$kind")
	proto=socketio path=/socket.io/
	[[ $kind == corelay-native ]] && proto=native path=/ws
	local prev=
	for a in "$@"; do
		[[ $prev == --clients ]] && clients=$a
		prev=$a
	done
	rel=$scenario/${name//[^A-Za-z0-9._+-]/_}${step:+@$step}-r$rep
	[[ $step == - ]] && rel=$scenario/${name//[^A-Za-z0-9._+-]/_}-r$rep
	base=$OUT/$rel
	mkdir -p "$OUT/$scenario"
	label=$name
	[[ $step != - ]] && label+=" @${step}/s"
	((REPEAT > 1)) && label+=" #$rep"
	RUN_NO=$((RUN_NO + 1))
	printf '[%d] %-10s %-24s %-7s run %d: ' "$RUN_NO" "$scenario" "$name" "$([[ $step == - ]] || echo "@$step/s")" "$rep"

	start_server "$kind" "$base.server.log"
	# Bounded: warm-up + window + drain, plus connection setup (up to 10 s per connection
	# attempt, 256 at a time) and the generator's own grace.
	limit=$(awk -v w="$WARMUP" -v d="$DURATION" -v dr="$DRAIN" -v c="$clients" 'BEGIN {printf "%d", w + d + dr + 30 + c / 100}')
	local fifo=$WORK/progress
	rm -f "$fifo"
	mkfifo "$fifo"
	local extra=()
	[[ $kind == corelay* ]] && extra=("${CORELAY_LOADGEN_ARGS[@]}")
	timeout -k 5 "$limit" "${CNS_EXEC[@]}" taskset -c "$CCPU" "$LOADGEN_BIN" "$sub" \
		--protocol "$proto" --url "ws://$SERVER_ADDR:$port$path" \
		--cpus "$CCPU" --spin-us "$SPIN_US" --server-pid "$SERVER_PID" \
		--duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
		--label "$label" --json "$base.json" "${extra[@]}" "$@" >"$base.txt" 2>"$fifo" &
	LG_PID=$!

	# Read the generator's progress lines as they come; the first `t=` line (one interval
	# after the load started) times perf stat onto the measured window.
	local line t delay plen perf_len=0 perf_note=-
	PERF_PID=
	: >"$base.progress"
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$base.progress"
		if ((PERF)) && [[ -z $PERF_PID && $perf_len == 0 && $line == t=* && $sub != idle ]]; then
			t=${line#t=}
			t=${t%%s*}
			t=${t// /}
			# The window opens at warm-up; start 50 ms into it, stop 250 ms before its end.
			read -r delay plen < <(awk -v w="$WARMUP" -v d="$DURATION" -v t="$t" 'BEGIN {
				late = t - w; if (late < 0) late = 0
				delay = w - t + 0.05; if (delay < 0) delay = 0
				printf "%.3f %.3f\n", delay, d - late - 0.3 }')
			if awk -v p="$plen" 'BEGIN {exit !(p >= 0.5)}'; then
				perf_len=$plen
				(
					sleep "$delay"
					exec taskset -c "$CCPU" perf stat -x, -o "$base.perf" \
						-e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
						-p "$SERVER_PID" -- sleep "$perf_len"
				) >/dev/null 2>"$base.perf.err" &
				PERF_PID=$!
			else
				perf_note="perf skipped: window too short"
			fi
		fi
	done <"$fifo"
	RUN_RC=0
	wait "$LG_PID" || RUN_RC=$?
	LG_PID=
	if [[ -n $PERF_PID ]]; then
		wait "$PERF_PID" || true
		PERF_PID=
	fi
	[[ -s $base.perf.err ]] || rm -f "$base.perf.err"
	local server_note=-
	kill -0 "$SERVER_PID" 2>/dev/null || server_note="the server exited during the run (see $rel.server.log)"
	stop_server "$port"
	((RUN_RC == 124 || RUN_RC == 137)) && server_note="the generator was stopped after ${limit} s"

	# Per-delivery perf figures, from the delivery rate over perf's own span.
	local sys_pd=- cs_pd=- dps=NA
	RUN_JSON=$rel.json
	[[ -f $base.json ]] && dps=$(jq -r '.messages.delivered_per_s' "$base.json")
	if [[ -f $base.perf && $perf_len != 0 ]]; then
		local task cs sys
		read -r task cs sys < <(perf_counts "$base.perf")
		read -r sys_pd cs_pd < <(awk -v s="$sys" -v c="$cs" -v r="$dps" -v l="$perf_len" 'BEGIN {
			n = r * l
			printf "%s %s\n", (s == "NA" || n <= 0) ? "NA" : s / n, (c == "NA" || n <= 0) ? "NA" : c / n }')
		if [[ $sys == NA || $cs == NA ]]; then
			perf_note="perf could not read:$([[ $cs == NA ]] && echo ' context-switches')$([[ $sys == NA ]] && echo ' raw_syscalls:sys_enter') (see $rel.perf)"
		fi
		[[ $task != NA ]] && printf '%s\n' "perf: task-clock ${task} ms over ${perf_len} s, context-switches $cs, syscalls $sys" >>"$base.progress"
	elif ((PERF)) && [[ $sub != idle && $perf_note == - ]]; then
		perf_note="perf did not run (see $rel.perf.err)"
	fi
	local notes=()
	[[ $server_note != - ]] && notes+=("$server_note")
	[[ $perf_note != - ]] && notes+=("$perf_note")
	local joined_note=-
	((${#notes[@]})) && joined_note=$(
		IFS=';'
		echo "${notes[*]}"
	)
	RUN_PASS=-
	if [[ $scenario == saturation ]]; then
		RUN_PASS=0
		if [[ -f $base.json ]] && jq -e --argjson lim "$(awk -v m="$SAT_P99_MS" 'BEGIN {print m * 1000}')" \
			'.latency.p99_us < $lim and .messages.lost == 0 and .connections.failed == 0 and .connections.dropped == 0 and .messages.delivered > 0' \
			"$base.json" >/dev/null; then
			RUN_PASS=1
		fi
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$name" "$step" "$rep" "$RUN_RC" \
		"$RUN_JSON" "$sys_pd" "$cs_pd" "$RUN_PASS" "$joined_note" >>"$OUT/runs.tsv"

	# One line of feedback.
	if [[ -f $base.json ]]; then
		jq -r '
		  def us: if . < 1000 then "\(.)us" elif . < 1e4 then "\(. / 10 | round / 100)ms" elif . < 1e6 then "\(. / 100 | round / 10)ms" else "\(. / 1e4 | round / 100)s" end;
		  if .scenario == "idle" then
		    "\(.connections.established)/\(.settings.clients) held, \(.server.rss_per_connection_bytes // 0 | round) B/conn"
		  else
		    "\(.messages.delivered_per_s | round) deliveries/s, p99 \(.latency.p99_us | us), lost \(.messages.lost), server \((.server.cpu_cores // 0) * 100 | round)% CPU, lag p99 \(.pacing_lag.p99_us | us)"
		  end' "$base.json" | tr -d '\n'
	else
		printf 'no report (exit %s, see %s.txt)' "$RUN_RC" "$rel"
	fi
	[[ $RUN_PASS == 1 ]] && printf ' [pass]'
	[[ $RUN_PASS == 0 ]] && printf ' [fail]'
	[[ $joined_note != - ]] && printf ' (%s)' "$joined_note"
	printf '\n'
}

# ---------------------------------------------------------------- scenarios
relay_args() { # clients room rate
	echo --clients "$1" --room-size "$2" --rate "$3" --payload "$PAYLOAD"
}

check_ports_for() { # clients: enough ephemeral ports towards one server address?
	local clients=$1 lo hi
	[[ $SERVER_ADDR == 127.* ]] && return 0 # loadgen spreads over 127.0.0.1-250
	read -r lo hi < <("${CNS_EXEC[@]}" cat /proc/sys/net/ipv4/ip_local_port_range)
	if ((hi - lo + 1 < clients + 1000)); then
		die "$clients connections from one address need more ephemeral ports than $lo-$hi${CLIENT_NS:+ in netns $CLIENT_NS} (sysctl net.ipv4.ip_local_port_range='1024 65535')"
	fi
}

for scenario in "${SCENARIO_LIST[@]}"; do
	echo
	echo "== $scenario"
	case $scenario in
	rates)
		check_ports_for "$RATES_CLIENTS"
		for ((rep = 1; rep <= REPEAT; rep++)); do
			for rate in "${RATE_LIST[@]}"; do
				for kind in "${SERVER_LIST[@]}"; do
					read -ra a < <(relay_args "$RATES_CLIENTS" 10 "$rate")
					run_one rates "$kind" "$rate" "$rep" relay "${a[@]}"
				done
			done
		done
		;;
	many)
		check_ports_for "$MANY_CLIENTS"
		((MANY_CLIENTS + 200 <= NOFILE)) || die "many: $MANY_CLIENTS clients need more than ulimit -n $NOFILE"
		for ((rep = 1; rep <= REPEAT; rep++)); do
			for kind in "${SERVER_LIST[@]}"; do
				read -ra a < <(relay_args "$MANY_CLIENTS" 10 "$MANY_RATE")
				run_one many "$kind" - "$rep" relay "${a[@]}"
			done
		done
		;;
	hot)
		check_ports_for "$HOT_CLIENTS"
		for ((rep = 1; rep <= REPEAT; rep++)); do
			for kind in "${SERVER_LIST[@]}"; do
				read -ra a < <(relay_args "$HOT_CLIENTS" "$HOT_ROOM" "$HOT_RATE")
				run_one hot "$kind" - "$rep" relay "${a[@]}"
			done
		done
		;;
	saturation)
		check_ports_for 1000
		for ((rep = 1; rep <= REPEAT; rep++)); do
			for kind in "${SERVER_LIST[@]}"; do
				for rate in "${SAT_RATE_LIST[@]}"; do
					read -ra a < <(relay_args 1000 10 "$rate")
					run_one saturation "$kind" "$rate" "$rep" relay "${a[@]}"
					[[ $RUN_PASS == 1 ]] || break
				done
			done
		done
		;;
	idle)
		check_ports_for "$IDLE_CLIENTS"
		((IDLE_CLIENTS + 200 <= NOFILE)) || die "idle: $IDLE_CLIENTS clients need more than ulimit -n $NOFILE"
		for ((rep = 1; rep <= REPEAT; rep++)); do
			for kind in "${SERVER_LIST[@]}"; do
				run_one idle "$kind" - "$rep" idle --clients "$IDLE_CLIENTS" --room-size 10
			done
		done
		;;
	esac
	{
		echo
		echo "== $(scenario_title "$scenario" "$OUT")"
		print_table "$OUT" "$scenario"
		table_footer "$scenario"
	} | tee -a "$OUT/summary.txt"
	draw_plots "$OUT" "$scenario"
done
echo
echo "runs: $OUT/runs.tsv; tables: $OUT/summary.txt"
