// Shared by the dashboard's browser test and its screenshot script: Debian's chromium driven
// by puppeteer-core, a corelay with an admin token, and players of the official
// socket.io client making traffic.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { io } = require('socket.io-client');
const { startCorelay, connected, ack, within } = require('../interop/lib');

/** The admin token the servers of these scripts run with. */
const TOKEN = 'browser-test-admin-token-0123456789';

/** Where Debian's chromium package puts its browser ($CHROMIUM overrides). */
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** puppeteer-core, or a failure that says how to install it. */
function puppeteer() {
  try {
    return require('puppeteer-core');
  } catch (e) {
    throw new Error(
      `puppeteer-core is not installed (${e.message}): run scripts/test.sh, or \`npm ci --prefix tests/interop\``,
    );
  }
}

/** A headless chromium, or a failure that says how to install it. */
async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(
      `Debian's chromium is missing (${CHROMIUM}): the dashboard's browser test needs it; ` +
        'scripts/test.sh installs it (`apt-get install chromium`), or set $CHROMIUM to a Chromium binary',
    );
  }
  return puppeteer().launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: no user namespace for chromium's sandbox, and a small /dev/shm.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
    defaultViewport: { width: 1360, height: 1000 },
    timeout: 20000,
  });
}

/** A corelay with two shards and the admin token. */
function startAdminCorelay(env = {}) {
  return startCorelay({ shards: 2, env: { CORELAY_ADMIN_TOKEN: TOKEN, ...env } });
}

/** A connected socket.io player (WebSocket, no reconnection unless asked). */
async function player(url, options = {}) {
  const socket = io(url, { transports: ['websocket'], forceNew: true, reconnection: false, ...options });
  await connected(socket);
  return socket;
}

/** `socket` joins `room`; resolves with the join's ack. */
function join(socket, room) {
  return ack(socket, 3000, 'join', room);
}

/** The server's JSON at `path` (under /admin/api/), read with the token. */
async function api(server, apiPath, init = {}) {
  const r = await fetch(`${server.url}${apiPath}`, {
    ...init,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(init.headers || {}) },
  });
  return { status: r.status, body: await r.json() };
}

/**
 * The samples of the server's /metrics, summed over shards and labels by name: the
 * figures the server reports by the path Prometheus scrapes, apart from the dashboard's.
 */
async function metrics(server) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const sums = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/.exec(line);
    if (m) sums[m[1]] = (sums[m[1]] || 0) + Number(m[3]);
  }
  return sums;
}

/** Opens the dashboard in `browser`, logs in through its form, and waits for the feed. */
async function openDashboard(browser, server) {
  const page = await browser.newPage();
  page.on('dialog', (dialog) => dialog.accept());
  await page.goto(`${server.url}/admin`, { waitUntil: 'load', timeout: 10000 });
  await page.waitForSelector('#token', { timeout: 5000 });
  await page.type('#token', TOKEN);
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load', timeout: 10000 }),
    page.click('button[type="submit"]'),
  ]);
  await page.waitForFunction(() => document.getElementById('feed-status').textContent === 'live', {
    timeout: 10000,
  });
  return page;
}

/** The integer a dashboard element shows (`1,234` reads 1234; `–` reads null). */
function shown(page, selector) {
  return page.$eval(selector, (node) => {
    const text = node.textContent.replace(/,/g, '').trim();
    return /^\d+$/.test(text) ? Number(text) : null;
  });
}

/** Waits until `selector` shows `value`, failing with what it showed last. */
async function waitShown(page, selector, value, ms = 5000) {
  try {
    await page.waitForFunction(
      (sel, want) => {
        const node = document.querySelector(sel);
        return node && node.textContent.replace(/,/g, '').trim() === String(want);
      },
      { timeout: ms },
      selector,
      value,
    );
  } catch (e) {
    const last = await page.$eval(selector, (n) => n.textContent).catch(() => '(absent)');
    throw new Error(`${selector} should show ${value}; it shows ${last} (${e.message})`);
  }
}

/** A PNG of `page` at `file`, with its folder made. */
async function screenshot(page, file) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.screenshot({ path: file, fullPage: true });
}

module.exports = {
  TOKEN,
  CHROMIUM,
  launchBrowser,
  startAdminCorelay,
  player,
  join,
  api,
  metrics,
  openDashboard,
  shown,
  waitShown,
  screenshot,
  within,
};
