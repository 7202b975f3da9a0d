// LiveFeed: the /v1/live WebSocket with a Server-Sent Events fallback and
// reconnect with backoff. Messages are docs/dashboard.md's JSON; the owner
// gets them through onMessage and re-subscribes itself on "hello".

export class LiveFeed {
  constructor({ device, onMessage, onState }) {
    this.device = device;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.ws = null;
    this.es = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.closed = false;
    this.timer = null;
  }

  start() { this.connect(); }

  stop() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    if (this.es) this.es.close();
  }

  subscribe(metrics) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: 'subscribe', device: this.device, metrics: metrics || [] }));
      return;
    }
    if (this.es) { // SSE subscriptions are in the URL: reopen
      this.es.close();
      this.es = null;
      this.openSSE();
    }
  }

  connect() {
    if (this.closed) return;
    // Two WebSocket failures before ever opening: the network blocks
    // upgrades, use SSE from now on.
    if (this.wsFailures >= 2 && typeof EventSource !== 'undefined') { this.openSSE(); return; }
    this.onState('connecting');
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/live';
    let opened = false;
    let ws;
    try { ws = new WebSocket(url); } catch { this.wsFailures++; this.retry(); return; }
    this.ws = ws;
    ws.onopen = () => { opened = true; this.attempt = 0; this.wsFailures = 0; this.onState('live'); };
    ws.onmessage = (ev) => { let m; try { m = JSON.parse(ev.data); } catch { return; } this.onMessage(m); };
    ws.onclose = (ev) => {
      this.ws = null;
      if (!opened) this.wsFailures++;
      if (ev.code === 1008) { location.href = '/login?next=' + encodeURIComponent(location.pathname); return; }
      this.retry();
    };
  }

  openSSE() {
    if (this.closed) return;
    this.onState('connecting');
    const es = new EventSource('/v1/live/sse?device=' + encodeURIComponent(this.device));
    this.es = es;
    es.onopen = () => { this.attempt = 0; this.onState('live (SSE)'); };
    es.onmessage = (ev) => { let m; try { m = JSON.parse(ev.data); } catch { return; } this.onMessage(m); };
    es.addEventListener('close', () => { es.close(); this.es = null; this.retry(); });
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) { this.es = null; this.retry(); } else { this.onState('reconnecting'); } };
  }

  retry() {
    if (this.closed) return;
    this.onState('reconnecting');
    const delay = Math.min(15000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
