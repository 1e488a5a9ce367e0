// Regenerates docs/admin.png: a corelay with players of the official socket.io client in a
// few rooms (one on long-polling, one room made with room:create), traffic that rises and
// falls for SECONDS, the dashboard open in headless chromium on the busiest room.
//
// Run by scripts/screenshot-admin.sh (which builds corelay first); the picture is never
// edited by hand.
'use strict';

const path = require('node:path');
const { ack } = require('../interop/lib');
const {
  launchBrowser,
  startAdminCorelay,
  player,
  join,
  openDashboard,
  screenshot,
} = require('./lib');

/** Seconds of traffic before the picture: enough for the plots to show a shape. */
const SECONDS = Number(process.env.SCREENSHOT_SECONDS || 45);

const OUT = process.argv[2] || path.join(__dirname, '..', '..', 'docs', 'admin.png');

async function main() {
  const server = await startAdminCorelay();
  const players = [];
  let browser;
  try {
    const rooms = { lobby: 7, 'match-eu-1': 4, 'match-us-2': 3, 'duel-7': 2 };
    const members = {};
    for (const [room, n] of Object.entries(rooms)) {
      members[room] = [];
      for (let i = 0; i < n; i++) {
        // One lobby player on long-polling, as a browser behind a strict proxy would be.
        const options = room === 'lobby' && i === n - 1 ? { transports: ['polling'] } : {};
        const p = await player(server.url, options);
        await join(p, room);
        players.push(p);
        members[room].push(p);
      }
    }
    const host = await player(server.url);
    players.push(host);
    await ack(host, 3000, 'room:create', { max_members: 8, metadata: { mode: 'ranked' } });

    browser = await launchBrowser();
    const page = await openDashboard(browser, server);

    // Traffic that swells and ebbs, so that the plots have a shape.
    const started = Date.now();
    const timer = setInterval(() => {
      const t = (Date.now() - started) / 1000;
      const wave = 0.5 + 0.5 * Math.sin(t / 6);
      for (const [room, list] of Object.entries(members)) {
        for (const p of list) {
          const sends = Math.round(wave * (room === 'lobby' ? 3 : 1) + Math.random());
          for (let k = 0; k < sends; k++) p.emit('to', room, 'move', { x: Math.random(), t });
        }
      }
    }, 100);
    await new Promise((resolve) => setTimeout(resolve, SECONDS * 1000));
    await page.click('#rooms tbody tr[data-key="lobby"]');
    await page.waitForSelector('#members tbody tr', { timeout: 5000 });
    // Two more feed ticks, so that the inspector has its rate.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    await screenshot(page, OUT);
    clearInterval(timer);
    console.log(`wrote ${OUT}`);
  } finally {
    for (const p of players) p.disconnect();
    if (browser) await browser.close();
    await server.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
