import { $, esc, ago, clock, unitOf, getJSON, every, fmtMetric, timeHTML, fullTime, shortTime } from './util.js';
import { LiveFeed } from './live.js';
import { uPlot, plotOpts } from './chart.js';

const RANGES = { '1m': 60e3, '5m': 5 * 60e3, '15m': 15 * 60e3, '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };
const MAX_POINTS = 20000;
const CHART_H = 200;

// Chart is one metric's uPlot with its data columns (x in seconds).
class Chart {
  constructor(metric, container) {
    this.metric = metric;
    this.unit = unitOf(metric);
    this.xs = []; this.vals = []; this.mins = []; this.maxs = [];
    this.lastT = -Infinity; // ms of the newest point drawn
    this.ready = false;     // history loaded for the current generation
    this.buffer = [];       // live updates waiting for history
    this.el = document.createElement('div');
    this.el.className = 'chart card';
    this.el.dataset.metric = metric;
    this.el.innerHTML = `<div class="chead"><h3>${esc(metric)}</h3><span class="cval num">–</span></div><div class="plot"></div>`;
    container.appendChild(this.el);
    const metricName = metric;
    this.u = new uPlot(plotOpts({
      width: this.plotWidth(),
      height: CHART_H,
      unit: this.unit,
      series: [{ label: metric }, { label: 'min' }, { label: 'max' }],
      band: true,
      fmtTick: null,
    }), [[], [], [], []], this.el.querySelector('.plot'));
    this.metricName = metricName;
  }

  plotWidth() { return Math.max(240, this.el.clientWidth - 24); }

  reset() {
    this.xs = []; this.vals = []; this.mins = []; this.maxs = [];
    this.lastT = -Infinity;
    this.ready = false;
    this.buffer = [];
  }

  // push appends one point unless it is not newer than the last one: the
  // client-side half of the seam rule (dedup by timestamp).
  push(t, v, lo, hi) {
    if (!(t > this.lastT)) return false;
    this.xs.push(t / 1000); this.vals.push(v); this.mins.push(lo); this.maxs.push(hi);
    this.lastT = t;
    if (this.xs.length > MAX_POINTS) this.trimCount(this.xs.length - MAX_POINTS);
    return true;
  }

  trimBefore(ms) {
    let i = 0;
    const s = ms / 1000;
    while (i < this.xs.length && this.xs[i] < s) i++;
    if (i) this.trimCount(i);
  }

  trimCount(n) {
    this.xs.splice(0, n); this.vals.splice(0, n); this.mins.splice(0, n); this.maxs.splice(0, n);
  }

  draw(xmin, xmax) {
    this.u.batch(() => {
      this.u.setData([this.xs, this.vals, this.mins, this.maxs], false);
      this.u.setScale('x', { min: xmin / 1000, max: xmax / 1000 });
    });
    const n = this.vals.length;
    this.el.dataset.points = String(n); // read by the end-to-end test
    this.el.querySelector('.cval').textContent = n ? fmtMetric(this.metric, this.vals[n - 1]) + (this.unit ? ' ' + this.unit : '') : '–';
  }
}

export function devicePage(data) {
  const device = data.device;
  const chartsEl = $('#charts');
  const charts = new Map();
  // range: kind 'live' (the window ends now; span or from) or 'fixed'.
  // follow: the live window slides with the clock; unchecked, it stays
  // where it was (data keeps arriving and shows when following again).
  let range = { kind: 'live', span: RANGES['15m'] };
  let follow = true;
  let frozen = null; // [lo, hi] while not following
  let picked = false; // the operator chose a range: no automatic default
  let seam = null;
  let generation = 0;
  let resume = false;
  let dirty = false;

  function ensureChart(metric) {
    let c = charts.get(metric);
    if (c) return c;
    const none = $('#nocharts');
    if (none) none.remove();
    c = new Chart(metric, chartsEl);
    // Keep charts in name order.
    const names = [...charts.keys(), metric].sort();
    const next = names[names.indexOf(metric) + 1];
    if (next) chartsEl.insertBefore(c.el, charts.get(next).el);
    charts.set(metric, c);
    return c;
  }

  function view() {
    const now = Date.now();
    if (range.kind === 'fixed') return [range.from, range.to];
    if (!follow && frozen) return frozen;
    return [range.from ?? now - range.span, now];
  }

  function redraw() {
    dirty = false;
    const [lo, hi] = view();
    for (const c of charts.values()) {
      if (range.kind === 'live' && range.span && follow) c.trimBefore(Date.now() - range.span);
      c.draw(lo, hi);
    }
  }
  function scheduleDraw() {
    if (dirty) return;
    dirty = true;
    requestAnimationFrame(redraw);
  }
  setInterval(() => { if (range.kind === 'live' && follow && !document.hidden) scheduleDraw(); }, 1000);

  // A sensible default for fresh data: once the first history is in, a
  // device with under a minute (or five) of data gets the 1 m (5 m) range
  // instead of a sliver at the right edge of 15 minutes.
  function autoRange() {
    if (picked || range.kind !== 'live' || range.span !== RANGES['15m']) return;
    let first = Infinity;
    for (const c of charts.values()) if (c.xs.length) first = Math.min(first, c.xs[0] * 1000);
    if (first === Infinity) return;
    const age = Date.now() - first;
    const key = age < 50e3 ? '1m' : age < 4.5 * 60e3 ? '5m' : null;
    if (!key) return;
    range = { kind: 'live', span: RANGES[key] };
    pressRange(key);
    scheduleDraw();
  }

  // History for one chart: [from, to) from the series API, then the live
  // updates that arrived meanwhile.
  async function loadHistory(c, from, to, gen) {
    const points = Math.min(5000, Math.max(200, Math.round(c.el.clientWidth || 800)));
    const q = new URLSearchParams({ device, metric: c.metric, from: Math.floor(from), to: Math.floor(to), points });
    let s;
    try {
      s = await getJSON('/ui/api/series?' + q);
    } catch (e) {
      console.warn('history', c.metric, e);
      s = { points: [] };
    }
    if (gen !== generation) return; // superseded by a newer range or subscription
    const raw = !s.source || s.source === 'raw';
    for (const p of s.points || []) {
      const t = typeof p.t === 'number' ? p.t : Date.parse(p.t); // Unix ms (storage.Series JSON)
      c.push(t, raw ? p.last : p.avg, p.min, p.max);
    }
    for (const u of c.buffer) c.push(u.t, u.last, u.min, u.max);
    c.buffer = [];
    c.ready = true;
    if ([...charts.values()].every((x) => x.ready)) autoRange();
    scheduleDraw();
  }

  function startHistory(c, gen) {
    c.ready = false;
    if (range.kind === 'fixed') {
      c.reset();
      loadHistory(c, range.from, range.to, gen);
      return;
    }
    if (resume && c.lastT > -Infinity) {
      // Reconnected: fill the gap (lastT, seam) and keep what is drawn.
      loadHistory(c, c.lastT + 1, seam, gen);
      return;
    }
    c.reset();
    loadHistory(c, range.from ?? Date.now() - range.span, seam, gen);
  }

  // ---- latest values table ----
  const latestEl = $('#latest');
  function setLatest(metric, v, t) {
    let row = latestEl.querySelector(`tr[data-metric="${CSS.escape(metric)}"]`);
    if (!row) {
      const empty = latestEl.querySelector('tr.empty');
      if (empty) empty.remove();
      row = document.createElement('tr');
      row.dataset.metric = metric;
      row.innerHTML = `<th title="${esc(metric)}">${esc(metric)}</th><td class="num v"></td><td class="unit">${esc(unitOf(metric))}</td><td class="num t muted"></td>`;
      const after = [...latestEl.querySelectorAll('tr[data-metric]')].find((r) => r.dataset.metric > metric);
      latestEl.insertBefore(row, after || null);
    }
    row.querySelector('.v').textContent = fmtMetric(metric, v);
    const te = row.querySelector('.t');
    te.textContent = clock(t);
    te.title = fullTime(t);
  }

  // ---- live feed ----
  const badge = $('#livestate');
  const feed = new LiveFeed({
    device,
    onState: (s) => { badge.textContent = s; badge.className = 'badge ' + (s.startsWith('live') ? 'on' : 'off'); },
    onMessage: (m) => {
      switch (m.type) {
        case 'hello':
          resume = [...charts.values()].some((c) => c.lastT > -Infinity) && range.kind === 'live';
          // Over SSE the subscription is in the URL and already made.
          if (feed.ws) feed.subscribe([]);
          break;
        case 'subscribed': {
          if (m.device !== device) return;
          seam = m.seam;
          const gen = ++generation;
          for (const [metric, l] of Object.entries(m.latest || {})) setLatest(metric, l.v, l.t);
          const names = new Set([...(data.metrics || []), ...Object.keys(m.latest || {}), ...charts.keys()]);
          for (const metric of names) startHistory(ensureChart(metric), gen);
          resume = false;
          break;
        }
        case 'updates':
          for (const u of m.updates) {
            if (u.device !== device) continue;
            setLatest(u.metric, u.last, u.t);
            if (range.kind === 'fixed') continue;
            let c = charts.get(u.metric);
            if (!c) { c = ensureChart(u.metric); startHistory(c, generation); }
            if (c.ready) c.push(u.t, u.last, u.min, u.max);
            else c.buffer.push(u);
          }
          scheduleDraw();
          break;
        case 'presence':
          if (m.device === device) setOnline(m.online);
          break;
        case 'error':
          console.warn('live:', m.error);
          break;
      }
    },
  });
  feed.start();

  const STATE_TEXT = { online: 'online', offline: 'offline', never: 'never seen', disabled: 'disabled' };
  function setState(state) {
    const el = $('#state');
    el.className = 'state s-' + state;
    el.textContent = STATE_TEXT[state] || state;
    $('#f-state').textContent = STATE_TEXT[state] || state;
  }
  function setOnline(on) {
    if ($('#state').classList.contains('s-disabled')) return;
    setState(on ? 'online' : 'offline');
  }

  // ---- range picker and follow-live ----
  const custom = $('#custom');
  function pressRange(key) {
    for (const o of document.querySelectorAll('.ranges button')) o.setAttribute('aria-pressed', String(o.dataset.range === key));
  }
  for (const b of document.querySelectorAll('.ranges button')) {
    b.addEventListener('click', () => {
      picked = true;
      pressRange(b.dataset.range);
      if (b.dataset.range === 'custom') { custom.hidden = false; return; }
      custom.hidden = true;
      range = { kind: 'live', span: RANGES[b.dataset.range] };
      frozen = null;
      followEl.checked = follow = true;
      resume = false;
      feed.subscribe([]); // a fresh seam; 'subscribed' reloads every chart
    });
  }
  const followEl = $('#follow');
  followEl.addEventListener('change', () => {
    follow = followEl.checked;
    frozen = follow ? null : view();
    if (follow && range.kind === 'fixed') {
      // Back to a live window of the same length.
      range = { kind: 'live', span: Math.min(RANGES['7d'], range.to - range.from) };
      feed.subscribe([]);
    }
    scheduleDraw();
  });
  custom.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const from = Date.parse(custom.elements.from.value);
    const toVal = custom.elements.to.value;
    if (Number.isNaN(from)) return;
    resume = false;
    if (!toVal) {
      range = { kind: 'live', from };
      followEl.checked = follow = true;
      feed.subscribe([]);
      return;
    }
    const to = Date.parse(toVal);
    if (!(to > from)) return;
    range = { kind: 'fixed', from, to };
    followEl.checked = follow = false;
    const gen = ++generation;
    for (const c of charts.values()) startHistory(c, gen);
  });

  // ---- every field live: state, last seen, rate, acked seq, sessions ----
  const lastSeen = $('#lastseen');
  const sessionsEl = $('#sessions');
  function sessionRows(list) {
    if (!list.length) return '<tr><td colspan="7" class="muted">No sessions yet: the device has not connected since it was added.</td></tr>';
    return list.map((s) => {
      const started = Date.parse(s.started_at);
      const ended = s.ended_at ? Date.parse(s.ended_at) : 0;
      return `<tr><td class="tnum">${timeHTML(started)}</td><td class="tnum">${s.open ? '<span class="badge on">open</span>' : timeHTML(ended)}</td>` +
        `<td>${esc(s.node)}</td><td>${esc(s.transport)}</td><td>${esc(s.remote_addr)}</td>` +
        `<td class="num">${s.readings}</td><td>${esc(s.close_text || '')}</td></tr>`;
    }).join('');
  }
  let lastSessions = '';
  every(2000, async () => {
    const d = await getJSON('/ui/api/devices/' + encodeURIComponent(device));
    $('#rate').textContent = d.live.rate.toFixed(2);
    $('#acked').textContent = String(d.device.acked);
    const ls = d.live.last_seen;
    lastSeen.innerHTML = ls ? timeHTML(ls, `${shortTime(ls)} (${ago(ls)})`) : '<span class="muted">never</span>';
    setState(d.state);
    const html = sessionRows(d.sessions || []);
    if (html !== lastSessions) { sessionsEl.innerHTML = html; lastSessions = html; }
  });

  // ---- resize ----
  const ro = new ResizeObserver(() => {
    for (const c of charts.values()) c.u.setSize({ width: c.plotWidth(), height: CHART_H });
  });
  ro.observe(chartsEl);

  // ---- command form ----
  const form = $('#command');
  if (form) {
    const out = $('#cmdresult');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = form.elements.name.value.trim();
      const text = form.elements.payload.value.trim();
      const body = { name };
      if (text) {
        try { body.payload = JSON.parse(text); } catch (e) { out.textContent = 'Payload is not valid JSON: ' + e.message; out.className = 'result err'; return; }
      }
      out.textContent = 'sending…';
      out.className = 'result';
      const btn = form.querySelector('button');
      btn.disabled = true;
      try {
        const res = await fetch('/ui/api/devices/' + encodeURIComponent(device) + '/commands', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': data.csrf },
          body: JSON.stringify(body),
        });
        const r = await res.json().catch(() => ({}));
        const ok = res.ok && r.ok;
        out.className = 'result ' + (ok ? 'ok' : 'err');
        out.textContent = `${ok ? '✓ ok' : '✗ ' + (r.error || r.detail || res.status)}  (id ${r.id || '–'}, HTTP ${res.status})` +
          (r.payload !== undefined ? '\n' + JSON.stringify(r.payload, null, 2) : '');
      } catch (e) {
        out.className = 'result err';
        out.textContent = 'request failed: ' + e.message;
      } finally {
        btn.disabled = false;
      }
    });
  }
}
