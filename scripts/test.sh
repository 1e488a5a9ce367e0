#!/usr/bin/env bash
# The one test command (README.md, .ci/run): installs what the tests need, builds, lints,
# and runs every test — unit, integration over real sockets, interop with the real
# socket.io and SocketCluster clients (npm socket.io-client and socketcluster-client, PyPI
# python-socketio), and the admin dashboard in a real browser (Debian's chromium, driven
# by npm puppeteer-core).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# nginx and haproxy live in /usr/sbin, which a user's PATH may not hold.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }

say "system packages"
missing=()
have node || missing+=(nodejs)
have npm || missing+=(npm)
have python3 || missing+=(python3)
# tests/proxy.rs runs corelay behind the real proxies of docs/DEPLOYMENT.md.
have nginx || missing+=(nginx)
have haproxy || missing+=(haproxy)
have openssl || missing+=(openssl)
# tests/admin.rs drives the dashboard in headless chromium (tests/browser/).
have chromium || missing+=(chromium)
# tests/cluster.rs runs nodes sharing a Redis of its own.
have redis-server || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  # Where systemd runs, installing nginx or haproxy starts and enables its service (nginx
  # on port 80). The tests start their own on ports of their own, so stop and disable the
  # services this install brought, and only those.
  if [ -d /run/systemd/system ]; then
    for service in nginx haproxy redis-server; do
      if [[ " ${missing[*]} " == *" $service "* ]]; then
        as_root systemctl disable --now --quiet "$service" || true
      fi
    done
  fi
fi

say "interop clients (npm socket.io-client, socketcluster-client and puppeteer-core, PyPI python-socketio)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
if [ ! -x tests/interop/.venv/bin/python ]; then
  python3 -m venv tests/interop/.venv 2>/dev/null || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv tests/interop/.venv
  }
fi
tests/interop/.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

say "build"
cargo build --workspace --all-targets --locked
cargo build --examples --locked

say "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p corelay --locked

say "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\n%d passed, %d failed\n", p, f }' "$log"
exit "$status"
