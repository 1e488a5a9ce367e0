// The admin dashboard in a real browser (issue 11): Debian's chromium, headless, driven by
// puppeteer-core. Players of the official socket.io client make known traffic; the page,
// logged in through its form, must show the figures the server reports on /metrics; a
// click on Kick must disconnect that player (for good: `io server disconnect`), and a
// click on Close room must take every member out of it.
//
// Run by `cargo test --test admin` (dashboard_in_a_real_browser); by hand:
// NODE_PATH=tests/interop/node_modules node --test tests/browser/admin.test.js
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('../interop/lib');
const {
  launchBrowser,
  startAdminCorelay,
  player,
  join,
  metrics,
  openDashboard,
  waitShown,
} = require('./lib');

/** Resolves once `socket` has received `n` `event`s. */
function received(socket, event, n) {
  return new Promise((resolve) => {
    let seen = 0;
    socket.on(event, () => {
      seen += 1;
      if (seen === n) resolve();
    });
  });
}

/**
 * Clicks `selector` in the page in one step: the live tables are redrawn as the feed
 * ticks, and a row found first and clicked after may be gone by then.
 */
async function clickLive(page, selector) {
  await page.$eval(selector, (el) => el.click());
}

test('the dashboard shows the server figures, kicks a player and closes a room', { timeout: 90000 }, async (t) => {
  const server = await startAdminCorelay();
  const sockets = [];
  let browser;
  t.after(async () => {
    for (const s of sockets) s.disconnect();
    if (browser) await browser.close();
    const { code } = await server.stop();
    assert.equal(code, 0, 'corelay exits 0 on SIGTERM');
  });

  // The last arena player polls (an official client on long-polling always has a poll
  // pending, which a kick's DISCONNECT answers).
  const arena = [];
  for (let i = 0; i < 2; i++) arena.push(await player(server.url));
  arena.push(await player(server.url, { transports: ['polling'] }));
  const duel = [await player(server.url), await player(server.url)];
  sockets.push(...arena, ...duel);
  for (const p of arena) await join(p, 'arena');
  for (const p of duel) await join(p, 'duel');

  // Two messages from each arena player: each of the others receives four.
  const delivered = Promise.all(arena.map((p) => received(p, 'move', 4)));
  for (const p of arena) {
    p.emit('to', 'arena', 'move', { step: 1 });
    p.emit('to', 'arena', 'move', { step: 2 });
  }
  await delivered;

  // The server's own figures, by the path Prometheus scrapes: what the test made.
  const m = await metrics(server);
  assert.equal(m.corelay_connections, 5);
  assert.equal(m.corelay_rooms, 2);
  assert.equal(m.corelay_messages_in_total, 6);

  browser = await launchBrowser();
  const page = await openDashboard(browser, server);
  await waitShown(page, '#total-connections', m.corelay_connections);
  await waitShown(page, '#total-rooms', m.corelay_rooms);
  await waitShown(page, '#total-messages-in', m.corelay_messages_in_total);
  await waitShown(page, '#total-messages-out', m.corelay_deliveries_total);
  await waitShown(page, '#rooms tr[data-key="arena"] td.members', 3);
  await waitShown(page, '#rooms tr[data-key="arena"] td.messages', 6);
  await waitShown(page, '#rooms tr[data-key="duel"] td.members', 2);

  // The inspector lists arena's members with their protocol and transport.
  await clickLive(page, '#rooms tr[data-key="arena"]');
  await page.waitForFunction(() => document.querySelectorAll('#members tbody tr').length === 3, {
    timeout: 5000,
  });
  const rows = await page.$$eval('#members tbody tr', (trs) =>
    trs.map((tr) => [...tr.cells].slice(0, 3).map((td) => td.textContent)),
  );
  const byName = Object.fromEntries(rows.map((r) => [r[0], r.slice(1)]));
  assert.deepEqual(Object.keys(byName).sort(), arena.map((p) => p.id).sort(), 'the arena players');
  assert.deepEqual(byName[arena[0].id], ['socket.io', 'websocket']);
  assert.deepEqual(byName[arena[2].id], ['socket.io', 'polling']);

  // Kick a player on WebSocket, then the one on long-polling: each is told to go and does
  // not come back.
  let left = 3;
  for (const victim of [arena[0], arena[2]]) {
    const gone = once(victim, 'disconnect', 5000);
    const button = await page.evaluateHandle((name) => {
      const row = [...document.querySelectorAll('#members tbody tr')].find(
        (tr) => tr.cells[0].textContent === name,
      );
      return row && row.querySelector('button.kick');
    }, victim.id);
    assert.ok(button.asElement(), `a Kick button on ${victim.id}'s row`);
    await button.asElement().click();
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
    assert.equal(victim.active, false, 'a kicked client does not reconnect');
    left -= 1;
    await waitShown(page, '#total-connections', 2 + left);
    await page.waitForFunction(
      (n) => document.querySelectorAll('#members tbody tr').length === n,
      { timeout: 5000 },
      left,
    );
  }
  const exposition = await (await fetch(`${server.url}/metrics`)).text();
  const kicked = [...exposition.matchAll(/corelay_closes_total\{[^}]*reason="kicked"[^}]*\} (\d+)/g)];
  assert.equal(kicked.reduce((n, m) => n + Number(m[1]), 0), 2, 'two closes counted as kicked');

  // Close duel: both its players hear they were removed, and the room is gone.
  const removed = duel.map((p) => once(p, 'room:kicked', 5000));
  await clickLive(page, '#rooms tr[data-key="duel"]');
  await page.waitForFunction(() => document.querySelectorAll('#members tbody tr').length === 2, {
    timeout: 5000,
  });
  await page.click('#close-room');
  for (const [notice] of await Promise.all(removed)) assert.deepEqual(notice, { room: 'duel' });
  await waitShown(page, '#total-rooms', 1);
  assert.ok(duel.every((p) => p.connected), 'closing a room keeps its players connected');
});
