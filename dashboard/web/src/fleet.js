import { $, esc, fmt, ago, unitOf, getJSON, every } from './util.js';

const PAGE = 50;

export function fleetPage() {
  const st = { offset: 0, q: '', label: '', total: 0 };
  const rows = $('#rows');
  let seq = 0;

  async function load() {
    const my = ++seq;
    const p = new URLSearchParams({ offset: st.offset, limit: PAGE });
    if (st.q) p.set('q', st.q);
    if (st.label) p.set('label', st.label);
    let page;
    try {
      page = await getJSON('/ui/api/devices?' + p);
    } catch (e) {
      if (my === seq) $('#summary').textContent = 'error: ' + e.message;
      return;
    }
    if (my !== seq) return; // a newer request is on its way
    st.total = page.total;
    if (st.offset >= page.total && page.total > 0) { st.offset = Math.floor((page.total - 1) / PAGE) * PAGE; return load(); }
    render(page);
  }

  function render(page) {
    const now = Date.now();
    const online = page.devices.filter((d) => d.online).length;
    $('#summary').textContent = `${page.total} device${page.total === 1 ? '' : 's'}`;
    const first = page.total ? page.offset + 1 : 0;
    $('#pageinfo').textContent = `${first}–${page.offset + page.devices.length} of ${page.total} · ${online} online on this page`;
    $('#prev').disabled = page.offset === 0;
    $('#next').disabled = page.offset + page.devices.length >= page.total;
    if (!page.devices.length) {
      rows.innerHTML = `<tr><td colspan="5" class="muted">No devices match.</td></tr>`;
      return;
    }
    rows.innerHTML = page.devices.map((d) => {
      const metrics = Object.keys(d.latest || {}).sort();
      const latest = metrics.slice(0, 6).map((m) => {
        const l = d.latest[m];
        return `<span class="chip"><span class="m">${esc(m)}</span> <span class="num">${esc(fmt(l.v))}</span>${unitOf(m) ? ' ' + esc(unitOf(m)) : ''}</span>`;
      }).join('') + (metrics.length > 6 ? `<span class="muted"> +${metrics.length - 6}</span>` : '');
      const labels = Object.entries(d.labels || {}).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join(' ');
      return `<tr data-device="${esc(d.id)}">
        <td class="c-state"><span class="dot ${d.online ? 'on' : 'off'}"></span><span class="sr">${d.online ? 'online' : 'offline'}</span>${d.enabled ? '' : ' <small class="muted">disabled</small>'}</td>
        <td class="c-id"><a href="/ui/devices/${encodeURIComponent(d.id)}">${esc(d.id)}</a><div class="muted small">${esc(d.name !== d.id ? d.name : '')} ${labels}</div></td>
        <td class="c-seen num">${esc(ago(d.last_seen, now))}</td>
        <td class="c-rate num">${d.rate.toFixed(2)}</td>
        <td class="c-latest">${latest || '<span class="muted">–</span>'}</td></tr>`;
    }).join('');
  }

  let deb;
  const onInput = () => {
    clearTimeout(deb);
    deb = setTimeout(() => { st.q = $('#q').value.trim(); st.label = $('#label').value.trim(); st.offset = 0; load(); }, 250);
  };
  $('#q').addEventListener('input', onInput);
  $('#label').addEventListener('input', onInput);
  $('#prev').addEventListener('click', () => { st.offset = Math.max(0, st.offset - PAGE); load(); });
  $('#next').addEventListener('click', () => { st.offset += PAGE; load(); });
  every(3000, load);
}
