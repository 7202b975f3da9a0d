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

export function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false });
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
