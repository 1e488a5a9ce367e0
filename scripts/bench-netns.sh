#!/usr/bin/env bash
# "Two hosts on one machine": scripts/bench-peers.sh with the servers in one network
# namespace and the load generator in another, joined by a veth pair, each side's receive
# processing steered (RPS) to its own CPU. Traffic crosses a real device and the TCP
# receive path of each side runs on that side's CPU, instead of loopback, where the sender
# does the receiver's work inside its own send(2). Needs root; a benchmark tool, not CI.
#
#   scripts/bench-netns.sh --scenario rates --rates 10 --duration 5 --warmup 2
#   scripts/bench-netns.sh --server-cpu 0 --client-cpu 1 [any bench-peers.sh option]
#
#   netns corelay-bench-srv              netns corelay-bench-gen
#   crb-srv 10.77.0.1/24  <--- veth --->  crb-gen 10.77.0.2/24
#   rx RPS -> server CPU                  rx RPS -> generator CPU
#   servers (taskset server CPU)          corelay-loadgen (taskset generator CPU)
#
# The namespaces are created here and deleted on exit (also on INT/TERM); the script refuses
# to run when they already exist. Options of its own (everything else goes to
# bench-peers.sh): --server-ns NAME, --client-ns NAME, --subnet A.B.C (10.77.0), and
# --server-cpu / --client-cpu (also passed on).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
	echo "bench-netns: $*" >&2
	exit 2
}
# shellcheck disable=SC2317 # also called from the traps
note() { echo "bench-netns: $*" >&2; }

SNS=corelay-bench-srv
CNS=corelay-bench-gen
VS=crb-srv
VC=crb-gen
SUBNET=10.77.0
SCPU=0
CCPU=1
PASS=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--server-ns) SNS=${2:?--server-ns needs a name}; shift ;;
	--client-ns) CNS=${2:?--client-ns needs a name}; shift ;;
	--subnet) SUBNET=${2:?--subnet needs A.B.C}; shift ;;
	--server-cpu) SCPU=${2:?--server-cpu needs a CPU}; shift ;;
	--client-cpu) CCPU=${2:?--client-cpu needs a CPU}; shift ;;
	--server-addr) die "--server-addr is set here ($SUBNET.1); use --subnet" ;;
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
		echo
		echo "bench-peers.sh options:"
		"$ROOT/scripts/bench-peers.sh" --help
		exit 0
		;;
	*) PASS+=("$1") ;;
	esac
	shift
done
[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet: three octets, e.g. 10.77.0"
[[ $SCPU =~ ^[0-9]+$ && $CCPU =~ ^[0-9]+$ && $SCPU != "$CCPU" ]] || die "--server-cpu and --client-cpu: two different CPUs"
(($(id -u) == 0)) || die "needs root (network namespaces, veth, sysctls)"
command -v ip >/dev/null || die "ip is needed (iproute2)"
SADDR=$SUBNET.1
CADDR=$SUBNET.2

for ns in "$SNS" "$CNS"; do
	if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
		die "network namespace $ns already exists (left by an earlier run? remove it: ip netns del $ns)"
	fi
done
ip link show "$VS" >/dev/null 2>&1 && die "a link named $VS already exists"

CREATED=()
CHILD=
# shellcheck disable=SC2317 # the EXIT trap
teardown() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
		kill -TERM "$CHILD" 2>/dev/null || true
		wait "$CHILD" 2>/dev/null || true
	fi
	local ns
	for ns in "${CREATED[@]}"; do
		ip netns del "$ns" 2>/dev/null || note "could not delete netns $ns"
	done
	((${#CREATED[@]})) && note "deleted netns ${CREATED[*]}"
	exit "$rc"
}
trap teardown EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

# ---------------------------------------------------------------- topology
ip netns add "$SNS"
CREATED+=("$SNS")
ip netns add "$CNS"
CREATED+=("$CNS")
ip link add "$VS" netns "$SNS" type veth peer name "$VC" netns "$CNS"
ip -n "$SNS" addr add "$SADDR/24" dev "$VS"
ip -n "$CNS" addr add "$CADDR/24" dev "$VC"
for pair in "$SNS:$VS" "$CNS:$VC"; do
	ip -n "${pair%%:*}" link set lo up
	ip -n "${pair%%:*}" link set "${pair#*:}" up
done

# Per-namespace settings: a deep accept queue for the server; for the generator, which
# connects to one address from one address, the widest ephemeral port range and reuse of
# TIME_WAIT ports (8,000-15,000 connections per run, run after run).
ip netns exec "$SNS" sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
ip netns exec "$CNS" sysctl -qw net.core.somaxconn=65535 \
	net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1

# RPS: each side's receive processing on its own CPU.
rps() { # netns dev cpu
	local mask
	mask=$(printf '%x' $((1 << $3)))
	ip netns exec "$1" sh -c "echo $mask > /sys/class/net/$2/queues/rx-0/rps_cpus" ||
		die "could not set RPS on $2 in $1"
	echo "$1/$2 rx-0 rps_cpus=$(ip netns exec "$1" cat "/sys/class/net/$2/queues/rx-0/rps_cpus") (CPU $3)"
}
rps "$SNS" "$VS" "$SCPU"
rps "$CNS" "$VC" "$CCPU"

# The link works both ways.
if command -v ping >/dev/null; then
	ip netns exec "$CNS" ping -c 1 -W 2 "$SADDR" >/dev/null || die "$CADDR cannot reach $SADDR"
fi
echo "netns $SNS ($VS $SADDR, server CPU $SCPU) <-veth-> netns $CNS ($VC $CADDR, generator CPU $CCPU)"
echo "$CNS: ip_local_port_range $(ip netns exec "$CNS" cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' '), tcp_tw_reuse $(ip netns exec "$CNS" cat /proc/sys/net/ipv4/tcp_tw_reuse)"

# ---------------------------------------------------------------- run
"$ROOT/scripts/bench-peers.sh" --server-ns "$SNS" --client-ns "$CNS" --server-addr "$SADDR" \
	--server-cpu "$SCPU" --client-cpu "$CCPU" "${PASS[@]}" &
CHILD=$!
rc=0
wait "$CHILD" || rc=$?
CHILD=
exit "$rc"
