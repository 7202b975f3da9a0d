import { $, esc, getJSON, every } from './util.js';

function flatten(obj, prefix = '', out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? prefix + '.' + k : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, Array.isArray(v) ? v.join(', ') : v]);
  }
  return out;
}

export function systemPage() {
  every(2000, async () => {
    const s = await getJSON('/ui/api/system');
    $('#s-rate').textContent = Number(s.ingest_rate).toFixed(1);
    $('#s-online').textContent = s.devices_online;
    $('#s-tracked').textContent = `of ${s.devices_tracked} seen`;
    $('#s-clients').textContent = s.live_clients;
    $('#s-queue').textContent = `${s.hub_queue} / ${s.hub_queue_cap}`;
    const rows = flatten(s.server).sort((a, b) => a[0].localeCompare(b[0]));
    $('#extra').innerHTML = rows.length
      ? rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td class="num">${esc(v)}</td></tr>`).join('')
      : '<tr><td class="muted">No server statistics wired in.</td></tr>';
  });
}
