#!/usr/bin/env bash
# Regenerates docs/admin.png, the picture of the admin dashboard in docs/OPERATIONS.md:
# a corelay with players of the official socket.io client making traffic, the dashboard
# open in headless chromium (tests/browser/screenshot.js). Never edit the picture by hand.
#
# Needs what scripts/test.sh installs: Debian's chromium and `npm ci --prefix tests/interop`.
# SCREENSHOT_SECONDS sets how long the traffic runs first (default 45).
set -euo pipefail
cd "$(dirname "$0")/.."

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "screenshot-admin: Debian's chromium is missing ($chromium): apt-get install chromium, or run scripts/test.sh" >&2
  exit 1
fi
if [ ! -d tests/interop/node_modules/puppeteer-core ]; then
  echo "screenshot-admin: puppeteer-core is missing: npm ci --prefix tests/interop" >&2
  exit 1
fi

cargo build --bin corelay --locked
CORELAY_BIN="$PWD/target/debug/corelay" NODE_PATH="$PWD/tests/interop/node_modules" CHROMIUM="$chromium" \
  node tests/browser/screenshot.js "$PWD/docs/admin.png"
