import { $, esc, getJSON, every, fullTime, shortTime } from './util.js';
import { uPlot, plotOpts, cssVar } from './chart.js';

function flatten(obj, prefix = '', out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? prefix + '.' + k : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, Array.isArray(v) ? v.join(', ') : v]);
  }
  return out;
}

function bytes(n) {
  if (!n) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

const n1 = (v) => (v === null || v === undefined ? '–' : Number(v).toFixed(Number(v) >= 100 ? 0 : 1));

// The charts: one card each, a key of the history columns and a unit.
const CHARTS = [
  { key: 'readings_per_s', title: 'Ingest', unit: 'readings/s' },
  { key: 'flush_ms', title: 'Flush latency (mean)', unit: 'ms' },
  { key: 'connections', title: 'Device connections', unit: 'sockets' },
  { key: 'handshakes_per_s', title: 'Handshakes', unit: 'per s' },
  { key: 'queue', title: 'Pipeline queue', unit: 'readings' },
  { key: 'backpressure_pct', title: 'Backpressure', unit: '% of time' },
  { key: 'mqtt_queue', title: 'MQTT queue', unit: 'batches' },
  { key: 'live_clients', title: 'Live hub clients', unit: 'browsers' },
];

export function systemPage() {
  const box = $('#syscharts');
  const plots = new Map();
  function plot(c) {
    let p = plots.get(c.key);
    if (p) return p;
    const el = document.createElement('div');
    el.className = 'chart card';
    el.dataset.chart = c.key;
    el.innerHTML = `<div class="chead"><h3>${esc(c.title)}</h3><span class="cval num">–</span></div><div class="plot"></div>`;
    box.appendChild(el);
    const u = new uPlot(plotOpts({
      width: Math.max(240, el.clientWidth - 24), height: 160, unit: c.unit,
      series: [{ label: c.title, stroke: cssVar('--accent', '#2563eb'), spanGaps: false }],
    }), [[], []], el.querySelector('.plot'));
    p = { el, u };
    plots.set(c.key, p);
    return p;
  }
  new ResizeObserver(() => {
    for (const p of plots.values()) p.u.setSize({ width: Math.max(240, p.el.clientWidth - 24), height: 160 });
  }).observe(box);

  every(2000, async () => {
    let s;
    try {
      s = await getJSON('/ui/api/system');
    } catch (e) {
      const n = $('#notice');
      n.hidden = false;
      n.className = 'notice err';
      n.textContent = `The server's status cannot be read: ${e.message}. Retrying every 2 s.`;
      return;
    }
    const now = s.now || {};
    const notice = $('#notice');
    if (s.storage_error) {
      notice.hidden = false;
      notice.className = 'notice err';
      notice.textContent = s.storage_error;
    } else notice.hidden = true;
    $('#s-version').textContent = s.version || '–';
    $('#s-commit').textContent = s.commit ? 'commit ' + s.commit.slice(0, 12) : 'commit unknown';
    $('#s-uptime').textContent = duration(s.uptime_s);
    const st = $('#s-started');
    st.textContent = 'since ' + shortTime(s.started);
    st.title = fullTime(s.started);
    $('#s-node').textContent = s.node || '–';
    const sto = s.storage || {};
    $('#s-storage').textContent = sto.backend ? (sto.mode && sto.mode !== sto.backend ? `${sto.backend} · ${sto.mode}` : sto.backend) : '–';
    $('#s-size').textContent = sto.size_bytes ? bytes(sto.size_bytes) + ' on disk' : 'size unknown';
    $('#s-conns').textContent = now.connections ?? '–';
    $('#s-handshakes').textContent = `${n1(now.handshakes_per_s)} handshakes/s · ${s.devices_online} devices online`;
    $('#s-rate').textContent = n1(now.readings_per_s ?? s.ingest_rate);
    $('#s-flush').textContent = n1(now.flush_ms);
    $('#s-queue').textContent = now.queue ?? '–';
    $('#s-bp').textContent = `readings waiting · backpressure ${n1(now.backpressure_pct)} % of the time`;
    if (s.mqtt) {
      $('#s-mqtt').textContent = s.mqtt.connected ? 'connected' : 'disconnected';
      $('#s-mqtt').className = 'v ' + (s.mqtt.connected ? 'ok' : 'err');
      $('#s-mqttq').textContent = `queue ${s.mqtt.queue} batches · ${s.mqtt.drops_total} dropped`;
    } else {
      $('#s-mqtt').textContent = 'off';
      $('#s-mqttq').textContent = 'no MQTT bridge configured (mqtt.*)';
    }
    $('#s-clients').textContent = s.live_clients;
    $('#s-hub').textContent = `browsers · ${n1(now.live_drops_per_s)} drops/s · queue ${s.hub_queue}/${s.hub_queue_cap}`;
    $('#s-every').textContent = `sampled every ${s.history_every_s} s, kept in memory`;
    $('#s-updated').textContent = 'updated ' + shortTime(Date.now());

    const h = s.history || { t: [] };
    const xs = h.t.map((t) => t / 1000);
    for (const c of CHARTS) {
      const col = h[c.key] || [];
      if (c.key.startsWith('mqtt') && !s.mqtt) continue;
      const p = plot(c);
      p.u.setData([xs, col]);
      const last = [...col].reverse().find((v) => v !== null);
      p.el.querySelector('.cval').textContent = last === undefined ? '–' : `${n1(last)} ${c.unit}`;
      p.el.dataset.points = String(col.filter((v) => v !== null).length);
    }

    const shown = new Set(['storage', 'mqtt']);
    const rows = flatten(s.server).filter(([k]) => !shown.has(k.split('.')[0])).sort((a, b) => a[0].localeCompare(b[0]));
    $('#extra-card').hidden = !rows.length;
    $('#extra').innerHTML = rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td class="num">${esc(v)}</td></tr>`).join('');
  });
}
