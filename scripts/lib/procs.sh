# shellcheck shell=bash
# Sourced by the benchmark scripts: stopping the processes a script started.

stop_pid() { # pid [grace seconds]: TERM, wait, KILL; only our own children
	local pid=$1 grace=${2:-3} i
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}
