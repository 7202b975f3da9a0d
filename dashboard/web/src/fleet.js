import { $, esc, ago, unitOf, getJSON, every, fmtMetric, fullTime } from './util.js';

const PAGE = 50;
const STATE_TEXT = { online: 'online', offline: 'offline', never: 'never seen', disabled: 'disabled' };
// Sorting a column first goes the way an operator looks: newest, busiest.
const FIRST_DIR = { id: 'asc', name: 'asc', state: 'asc', last_seen: 'desc', rate: 'desc' };

export function fleetPage() {
  const st = { offset: 0, q: '', label: '', state: '', sort: 'id', dir: 'asc', total: 0 };
  const rows = $('#rows');
  const notice = $('#notice');
  let seq = 0;

  async function load() {
    const my = ++seq;
    const p = new URLSearchParams({ offset: st.offset, limit: PAGE, sort: st.sort, dir: st.dir });
    if (st.q) p.set('q', st.q);
    if (st.label) p.set('label', st.label);
    if (st.state) p.set('state', st.state);
    let page;
    try {
      page = await getJSON('/ui/api/devices?' + p);
    } catch (e) {
      if (my !== seq) return;
      notice.hidden = false;
      notice.className = 'notice err';
      notice.textContent = `The device list cannot be loaded: ${e.message}. The page retries every few seconds.`;
      return;
    }
    if (my !== seq) return; // a newer request is on its way
    notice.hidden = true;
    st.total = page.total;
    if (st.offset >= page.total && page.total > 0) { st.offset = Math.floor((page.total - 1) / PAGE) * PAGE; return load(); }
    render(page);
  }

  function render(page) {
    const now = Date.now();
    const c = page.counts;
    for (const el of document.querySelectorAll('[data-count]')) el.textContent = c[el.dataset.count] ?? '';
    $('#summary').textContent = `${c.online} online · ${c.offline} offline · ${c.never} never seen · ${c.disabled} disabled · ${c.all} total`;
    const first = page.total ? page.offset + 1 : 0;
    $('#pageinfo').textContent = `${first}–${page.offset + page.devices.length} of ${page.total}`;
    $('#prev').disabled = page.offset === 0;
    $('#next').disabled = page.offset + page.devices.length >= page.total;
    for (const th of document.querySelectorAll('thead th[aria-sort]')) {
      const k = th.querySelector('button').dataset.sort;
      th.setAttribute('aria-sort', k === st.sort ? (st.dir === 'asc' ? 'ascending' : 'descending') : 'none');
    }
    if (!page.devices.length) {
      const filtered = st.q || st.label || st.state;
      rows.innerHTML = filtered
        ? `<tr><td colspan="5" class="muted">No devices match these filters.</td></tr>`
        : `<tr><td colspan="5" class="emptyfleet"><strong>No devices yet.</strong> Add one with <code>meridian device add boiler-7 --label site=north</code> (it prints the device's token) or <code>POST /v1/admin/devices</code>, then point its firmware — or <code>meridian sim</code> — at this server. Devices appear here as they are added.</td></tr>`;
      return;
    }
    rows.innerHTML = page.devices.map((d) => {
      const metrics = Object.keys(d.latest || {}).sort();
      const latest = metrics.slice(0, 6).map((m) => {
        const l = d.latest[m];
        const u = unitOf(m);
        return `<span class="chip"><span class="m">${esc(m)}</span> <span class="num">${esc(fmtMetric(m, l.v))}</span>${u ? ' ' + esc(u) : ''}</span>`;
      }).join('') + (metrics.length > 6 ? `<span class="muted"> +${metrics.length - 6}</span>` : '');
      const labels = Object.entries(d.labels || {}).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join(' ');
      const seen = d.last_seen
        ? `<time data-ms="${d.last_seen}" title="${esc(fullTime(d.last_seen))}">${esc(ago(d.last_seen, now))}</time>`
        : '<span class="muted">never</span>';
      const never = !d.last_seen;
      return `<tr data-device="${esc(d.id)}" data-state="${esc(d.state)}">
        <td class="c-state"><span class="state s-${esc(d.state)}">${esc(STATE_TEXT[d.state] || d.state)}</span></td>
        <td class="c-id"><a href="/ui/devices/${encodeURIComponent(d.id)}">${esc(d.id)}</a>${d.name && d.name !== d.id ? ` <span class="muted">${esc(d.name)}</span>` : ''}<div class="small">${labels}</div></td>
        <td class="c-seen num">${seen}</td>
        <td class="c-rate num">${never ? '<span class="muted">–</span>' : d.rate.toFixed(2)}</td>
        <td class="c-latest">${latest || `<span class="muted">${never ? 'no readings yet' : 'none since server start'}</span>`}</td></tr>`;
    }).join('');
  }

  let deb;
  const onInput = () => {
    clearTimeout(deb);
    deb = setTimeout(() => { st.q = $('#q').value.trim(); st.label = $('#label').value.trim(); st.offset = 0; load(); }, 250);
  };
  $('#q').addEventListener('input', onInput);
  $('#label').addEventListener('input', onInput);
  for (const b of document.querySelectorAll('.states button')) {
    b.addEventListener('click', () => {
      st.state = b.dataset.state;
      st.offset = 0;
      for (const o of document.querySelectorAll('.states button')) o.setAttribute('aria-pressed', String(o === b));
      load();
    });
  }
  for (const b of document.querySelectorAll('thead button[data-sort]')) {
    b.addEventListener('click', () => {
      const k = b.dataset.sort;
      st.dir = st.sort === k ? (st.dir === 'asc' ? 'desc' : 'asc') : FIRST_DIR[k];
      st.sort = k;
      st.offset = 0;
      load();
    });
  }
  $('#prev').addEventListener('click', () => { st.offset = Math.max(0, st.offset - PAGE); load(); });
  $('#next').addEventListener('click', () => { st.offset += PAGE; load(); });
  every(3000, load);
}
