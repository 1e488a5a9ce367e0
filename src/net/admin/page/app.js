// corelay's admin dashboard: reads the live feed (/admin/feed), draws what it says, and
// sends the operator's actions to /admin/api/. No library: plain DOM and canvas. Every
// text that comes from the server (room names, player ids) goes into the page as text,
// never as HTML.
'use strict';

/** Seconds of history the plots keep: five minutes at one sample a second. */
const HISTORY = 300;
/** Pause before the feed is opened again after it closed. */
const RECONNECT_MS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  feed: null,
  search: '',
  page: 0,
  inspect: null,
  history: [],
  searchTimer: null,
};

// ----- formatting -----

const int = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
const rate = (n) => (n == null ? '–' : n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1));
const micros = (n) => (n == null ? '–' : n >= 10000 ? `${(n / 1000).toFixed(1)} ms` : `${int(n)} µs`);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function notice(text, ok = true) {
  const n = $('notice');
  n.textContent = text;
  n.className = ok ? 'ok' : 'bad';
}

// ----- the feed -----

function send(view) {
  if (state.feed && state.feed.readyState === WebSocket.OPEN) state.feed.send(JSON.stringify(view));
}

function roomsView() {
  return document.hidden ? null : { search: state.search, page: state.page };
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const feed = new WebSocket(`${scheme}://${location.host}/admin/feed`);
  state.feed = feed;
  feed.onopen = () => {
    setStatus('live', 'live');
    send({ rooms: roomsView(), inspect: state.inspect });
  };
  feed.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.kind === 'stats') showStats(msg);
    else if (msg.kind === 'rooms') showRooms(msg);
    else if (msg.kind === 'room') showRoom(msg);
  };
  feed.onclose = async () => {
    state.feed = null;
    setStatus('disconnected', 'down');
    // Logged out (the cookie went, or the token changed): back to the login form.
    try {
      const r = await fetch('/admin/api/stats', { credentials: 'same-origin' });
      if (r.status === 401 || r.status === 404) {
        location.reload();
        return;
      }
    } catch (_) {
      // The server is away: keep trying.
    }
    setTimeout(connect, RECONNECT_MS);
  };
}

function setStatus(text, cls) {
  const s = $('feed-status');
  s.textContent = text;
  s.className = `pill ${cls}`;
}

// ----- figures -----

function showStats(s) {
  const t = s.totals;
  $('total-connections').textContent = int(t.connections);
  $('total-rooms').textContent = int(t.rooms);
  $('total-in-rate').textContent = rate(t.in_per_s);
  $('total-out-rate').textContent = rate(t.out_per_s);
  $('total-messages-in').textContent = int(t.messages_in);
  $('total-messages-out').textContent = int(t.messages_out);
  const w = s.latency.window;
  $('latency-p50').textContent = w.count ? micros(w.p50_us) : '–';
  $('latency-p99').textContent = w.count ? micros(w.p99_us) : '–';
  $('draining').hidden = !s.draining;
  $('drain').disabled = s.draining;

  const rows = s.shards.map((sh) =>
    el('tr', { 'data-shard': sh.shard },
      el('td', {}, sh.shard),
      el('td', { class: sh.alive ? 'ok' : 'bad' }, sh.alive ? 'serving' : 'stalled'),
      el('td', { class: 'num connections' }, int(sh.connections)),
      el('td', { class: 'num rooms' }, int(sh.rooms)),
      el('td', { class: 'num' }, rate(sh.in_per_s)),
      el('td', { class: 'num' }, rate(sh.out_per_s)),
      el('td', { class: 'num' }, sh.latency.count ? int(sh.latency.p50_us) : '–'),
      el('td', { class: 'num' }, sh.latency.count ? int(sh.latency.p99_us) : '–'),
      el('td', { class: 'num' }, int(sh.mesh_backlog))));
  $('shards').tBodies[0].replaceChildren(...rows);

  // Several nodes through Redis ([cluster]): each node as its lease last said.
  $('cluster').hidden = !s.cluster;
  if (s.cluster) {
    $('cluster-redis').textContent = s.cluster.redis ? 'Redis up' : 'Redis unreachable';
    const nodes = s.cluster.nodes.map((n) =>
      el('tr', { 'data-node': n.id },
        el('td', {}, n.id),
        el('td', {}, n.addr),
        el('td', { class: 'num' }, int(n.shards)),
        el('td', { class: 'num' }, int(n.connections)),
        el('td', { class: 'num' }, int(n.rooms)),
        el('td', { class: n.draining ? 'bad' : 'ok' }, n.draining ? 'draining' : 'serving')));
    $('nodes').tBodies[0].replaceChildren(...nodes);
  }

  showCounts($('closes'), s.closes);
  showCounts($('refused'), s.refused);

  if (t.in_per_s != null) {
    state.history.push({
      at: s.at_ms,
      in: t.in_per_s,
      out: t.out_per_s,
      p50: w.count ? w.p50_us : null,
      p99: w.count ? w.p99_us : null,
    });
    if (state.history.length > HISTORY) state.history.shift();
  }
  drawPlots();
}

function showCounts(dl, counts) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  if (!entries.length) {
    dl.replaceChildren(el('dt', { class: 'muted' }, 'none'), el('dd'));
    return;
  }
  dl.replaceChildren(...entries.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, int(v))]));
}

// ----- plots -----

function drawPlots() {
  const h = state.history;
  plot($('plot-rates'), h, [
    { key: 'in', color: cssVar('--in') },
    { key: 'out', color: cssVar('--out') },
  ], rate);
  plot($('plot-latency'), h, [
    { key: 'p50', color: cssVar('--p50') },
    { key: 'p99', color: cssVar('--p99') },
  ], (v) => int(v));
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** A line per series over the last HISTORY seconds, with a light grid and the max marked. */
function plot(canvas, points, series, label) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 52;
  const bottom = height - 18;
  const plotWidth = width - left - 8;
  let max = 0;
  for (const p of points) for (const s of series) if (p[s.key] != null) max = Math.max(max, p[s.key]);
  max = niceCeiling(max);
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = cssVar('--muted');
  g.strokeStyle = cssVar('--line');
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = 6 + ((bottom - 6) * i) / 4;
    g.beginPath();
    g.moveTo(left, y + 0.5);
    g.lineTo(width - 8, y + 0.5);
    g.stroke();
    g.textAlign = 'right';
    g.fillText(label((max * (4 - i)) / 4), left - 6, y + 4);
  }
  g.textAlign = 'left';
  g.fillText(`−${Math.round(HISTORY / 60)} min`, left, height - 4);
  g.textAlign = 'right';
  g.fillText('now', width - 8, height - 4);
  if (!points.length || max === 0) return;
  const x = (i) => left + plotWidth - ((points.length - 1 - i) * plotWidth) / (HISTORY - 1);
  const y = (v) => bottom - ((bottom - 6) * v) / max;
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let drawing = false;
    points.forEach((p, i) => {
      const v = p[s.key];
      if (v == null) {
        drawing = false;
        return;
      }
      if (drawing) g.lineTo(x(i), y(v));
      else g.moveTo(x(i), y(v));
      drawing = true;
    });
    g.stroke();
  }
}

/** 1, 2 or 5 times a power of ten, at least `v`. */
function niceCeiling(v) {
  if (v <= 0) return 0;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ----- rooms -----

function showRooms(r) {
  if (r.search !== state.search || r.page !== state.page) return;
  $('rooms-count').textContent = `${int(r.matching)} ${r.search ? 'matching' : 'in all'}`;
  $('page').textContent = `page ${r.page + 1}`;
  $('prev-page').disabled = r.page === 0;
  $('next-page').disabled = !r.next_page;
  const rows = r.rooms.map((room) => {
    const flags = [room.created ? 'created' : '', room.private ? 'private' : '', room.locked ? 'locked' : '']
      .filter(Boolean).join(' ');
    const row = el('tr', { 'data-key': room.key, class: room.key === state.inspect ? 'selected' : '' },
      el('td', { class: 'name', title: room.name }, room.name),
      el('td', {}, room.namespace),
      el('td', { class: 'num' }, room.home),
      el('td', { class: 'num members' }, int(room.members)),
      el('td', { class: 'num' }, rate(room.per_s)),
      el('td', { class: 'num messages' }, int(room.messages)),
      el('td', { class: 'muted' }, flags));
    row.addEventListener('click', () => inspect(room.key));
    return row;
  });
  $('rooms').tBodies[0].replaceChildren(...rows);
}

function setRoomsView() {
  send({ rooms: roomsView() });
}

function inspect(key) {
  state.inspect = key;
  $('inspector').hidden = key == null;
  for (const row of $('rooms').tBodies[0].rows) row.classList.toggle('selected', row.dataset.key === key);
  if (key != null) {
    $('inspect-name').textContent = '…';
    $('members').tBodies[0].replaceChildren();
  }
  send({ inspect: key });
}

function showRoom(r) {
  if (r.key !== state.inspect) return;
  $('inspect-name').textContent = r.namespace === '/' ? r.name : `${r.name} (${r.namespace})`;
  const facts = $('inspect-facts');
  if (!r.found) {
    facts.replaceChildren(el('dt', {}, 'state'), el('dd', { class: 'bad' }, 'gone'));
    $('members').tBodies[0].replaceChildren();
    $('close-room').disabled = true;
    return;
  }
  $('close-room').disabled = false;
  const h = r.home;
  const list = [
    ['members', h ? `${int(h.members)} of at most ${int(h.max_members)}` : '–'],
    ['home shard', h ? h.home : '–'],
    ['per shard', h ? h.per_shard.join(' · ') : '–'],
    ['messages / s', rate(r.per_s)],
    ['messages', h ? int(h.messages) : '–'],
    ['host', h && h.host ? h.host : '–'],
    ['kind', h ? [h.created ? 'created' : 'joined', h.private ? 'private' : '', h.locked ? 'locked' : ''].filter(Boolean).join(', ') : '–'],
    ['kept for resume', h ? int(h.kept) : '–'],
  ];
  facts.replaceChildren(...list.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  const rows = r.members.map((m) => {
    const kick = el('button', { type: 'button', class: 'kick danger', 'data-player': m.id }, 'Kick');
    kick.addEventListener('click', () => kickPlayer(m));
    return el('tr', { 'data-player': m.id },
      el('td', { title: `id ${m.id}` }, m.name + (m.away ? ' (away)' : '')),
      el('td', {}, m.protocol),
      el('td', {}, m.transport),
      el('td', { class: 'num' }, m.shard),
      el('td', { class: 'num' }, kick));
  });
  $('members').tBodies[0].replaceChildren(...rows);
  $('members-note').textContent = r.truncated ? `showing the first ${r.members.length}` : '';
}

// ----- actions -----

async function act(path, body) {
  const r = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  let answer = {};
  try {
    answer = await r.json();
  } catch (_) {
    // Not JSON: the status says enough.
  }
  return { status: r.status, answer };
}

async function kickPlayer(m) {
  if (!confirm(`Kick ${m.name} (${m.protocol})? Its connection is closed.`)) return;
  const { status, answer } = await act('/admin/api/kick', { player: m.id });
  if (answer.kicked) notice(`kicked ${m.name}`);
  else notice(`could not kick ${m.name}: ${answer.error || (status === 404 ? 'gone already' : status)}`, false);
}

async function closeRoom() {
  const key = state.inspect;
  if (key == null || !confirm('Close this room? Every member is removed from it.')) return;
  const { status, answer } = await act('/admin/api/close-room', { room: key });
  if (answer.closed) notice(`closed the room (${int(answer.members)} members removed)`);
  else notice(`could not close the room: ${answer.error || (status === 404 ? 'gone already' : status)}`, false);
}

async function drain() {
  if (!confirm('Start a drain? The server stops taking players and tells every client to leave.')) return;
  const { answer } = await act('/admin/api/drain', {});
  notice(answer.draining ? 'draining' : `drain refused: ${answer.error}`, !!answer.draining);
}

// ----- wiring -----

$('search').addEventListener('input', (e) => {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(() => {
    state.search = e.target.value;
    state.page = 0;
    setRoomsView();
  }, 250);
});
$('prev-page').addEventListener('click', () => {
  state.page = Math.max(0, state.page - 1);
  setRoomsView();
});
$('next-page').addEventListener('click', () => {
  state.page += 1;
  setRoomsView();
});
$('close-room').addEventListener('click', closeRoom);
$('stop-inspect').addEventListener('click', () => inspect(null));
$('drain').addEventListener('click', drain);
// A hidden page asks the shards for nothing but the figures.
document.addEventListener('visibilitychange', setRoomsView);
window.addEventListener('resize', drawPlots);

connect();
