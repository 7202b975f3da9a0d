// Small helpers shared by the pages.

export function $(sel, root = document) { return root.querySelector(sel); }

export function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Units guessed from metric name suffixes; the server (pages.go) has the same table.
const UNITS = {
  c: '°C', celsius: '°C', f: '°F', k: 'K',
  pct: '%', percent: '%', rh: '%RH',
  v: 'V', mv: 'mV', a: 'A', ma: 'mA', w: 'W', kw: 'kW', wh: 'Wh', kwh: 'kWh',
  hz: 'Hz', rpm: 'rpm', pa: 'Pa', hpa: 'hPa', kpa: 'kPa', bar: 'bar',
  ms: 'ms', s: 's', m: 'm', mm: 'mm', db: 'dB', dbm: 'dBm', lux: 'lx', ppm: 'ppm',
};

export function unitOf(metric) {
  const i = Math.max(metric.lastIndexOf('_'), metric.lastIndexOf('.'));
  if (i < 0) return '';
  return UNITS[metric.slice(i + 1).toLowerCase()] || '';
}

// Decimals per unit: a temperature to 0.1°, a voltage to 10 mV... A
// metric without a known unit gets 6 significant digits (fmt).
const DECIMALS = {
  '°C': 1, '°F': 1, K: 1, '%': 1, '%RH': 1, V: 2, mV: 0, A: 2, mA: 0, W: 0, kW: 2, Wh: 0, kWh: 2,
  Hz: 1, rpm: 0, Pa: 0, hPa: 1, kPa: 1, bar: 2, ms: 0, s: 1, m: 2, mm: 0, dB: 1, dBm: 0, lx: 0, ppm: 0,
};

// fmtMetric formats a metric's value with its unit's decimals (no unit).
export function fmtMetric(metric, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const d = DECIMALS[unitOf(metric)];
  if (d === undefined) return fmt(v);
  return v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d, useGrouping: false });
}

// fmt formats a value with 6 significant digits, like the server.
export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
  return String(Number(v.toPrecision(6)));
}

export function ago(ms, now = Date.now()) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

// ---- one time format for the whole dashboard ----
// The browser's local time with its zone shown (or UTC, a choice kept in
// localStorage); the full date and time on hover.

const TZ_KEY = 'meridian.tz';
export function useUTC() {
  try { return localStorage.getItem(TZ_KEY) === 'utc'; } catch { return false; }
}
export function setUTC(on) {
  try { localStorage.setItem(TZ_KEY, on ? 'utc' : 'local'); } catch { /* private mode: not remembered */ }
}

let fmtr = null;
function parts(ms) {
  if (!fmtr) {
    fmtr = new Intl.DateTimeFormat('en-GB', {
      timeZone: useUTC() ? 'UTC' : undefined, year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short',
    });
  }
  const o = {};
  for (const p of fmtr.formatToParts(new Date(ms))) o[p.type] = p.value;
  return o;
}

// fullTime: "2026-11-30 14:03:12 CET" — the hover text.
export function fullTime(ms) {
  if (!ms) return '';
  const p = parts(ms);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
}

// shortTime: "14:03:12 CET" today, "2026-11-29 14:03 CET" before.
export function shortTime(ms, now = Date.now()) {
  if (!ms) return 'never';
  const p = parts(ms);
  const q = parts(now);
  if (p.year === q.year && p.month === q.month && p.day === q.day) return `${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute} ${p.timeZoneName}`;
}

// clock is the time of a reading in tables: shortTime.
export function clock(ms) { return shortTime(ms); }

// timeHTML renders a time the way the server's timeTag does.
export function timeHTML(ms, text) {
  if (!ms) return '<span class="muted">never</span>';
  return `<time data-ms="${ms}" title="${esc(fullTime(ms))}">${esc(text ?? shortTime(ms))}</time>`;
}

// localizeTimes rewrites the server-rendered <time data-ms> elements
// (UTC) into the chosen format.
export function localizeTimes(root = document) {
  for (const el of root.querySelectorAll('time[data-ms]')) {
    const ms = Number(el.dataset.ms);
    if (!ms) continue;
    el.textContent = shortTime(ms);
    el.title = fullTime(ms);
  }
}

// tzButton wires the header's Local/UTC switch: the choice is stored and
// the page reloads so every time and chart axis follows it.
export function tzButton() {
  const b = document.getElementById('tz');
  if (!b) return;
  const utc = useUTC();
  b.textContent = utc ? 'UTC' : 'Local time';
  b.setAttribute('aria-pressed', String(utc));
  b.addEventListener('click', () => { setUTC(!useUTC()); location.reload(); });
}

export async function getJSON(url) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (res.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search); throw new Error('logged out'); }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || body.error || res.statusText);
  return body;
}

export function pageData() {
  const el = document.getElementById('page-data');
  try { return JSON.parse(el ? el.textContent : '{}') || {}; } catch { return {}; }
}

// every runs fn now and then every ms while the tab is visible.
export function every(ms, fn) {
  let t = null;
  const run = async () => {
    t = null;
    try { await fn(); } catch (e) { console.warn(e); }
    if (!document.hidden) t = setTimeout(run, ms);
  };
  document.addEventListener('visibilitychange', () => { if (!document.hidden && t === null) run(); });
  run();
}
