/*
 * meridian.c - the ring, the WebSocket client and the HTTP fallback.
 * Section numbers (§) refer to docs/protocol.md.
 *
 * The ring holds encoded batches in seq order. A batch gets its seq only
 * when it is first sent (after a hello told us the watermark), and its bytes
 * never change after that, so a resend carries the same readings under the
 * same seq (§5.4). Numbered batches always precede unnumbered ones.
 */
#include "meridian.h"
#include "mp.h"
#include "sha1.h"

#include <stddef.h>
#include <string.h>

enum { ST_DOWN, ST_WS };

/* Compile-time checks of the MER_* sizes (C99 has no static_assert). */
typedef char slot_bytes_fit_uint16[(MER_SLOT_BYTES >= 64 && MER_SLOT_BYTES <= 65535) ? 1 : -1];
typedef char rx_holds_hello[(MER_RX_BYTES >= 256) ? 1 : -1];
typedef char tx_holds_request[(MER_TX_BYTES >= 256) ? 1 : -1];

/* Waits beyond plain backoff (§7.4, §9); recommendations, not server rules. */
#define WAIT_AUTH_MS (15u * 60u * 1000u)   /* 401: the token is wrong */
#define WAIT_POLICY_MS (5u * 60u * 1000u)  /* 1008 / 403 */
#define WAIT_LATER_MS (30u * 1000u)        /* 1013 / 429 */
#define HEALTHY_MS 60000u                  /* up this long: reset backoff */
#define MAX_FAILS 3                        /* refusals before a batch is dropped (§9, 1007) */

/* Our batch header, with fixed-width seq (cf) and count (dc) so both can be
 * patched in place: 83 "type" "batch" "seq" cf<8> "readings" dc<2>. */
#define SEQ_AT 17
#define COUNT_AT 35
#define HEADER_LEN 37

/* ---- small helpers ----------------------------------------------------- */

static uint32_t now(mer_client_t *c) { return c->cfg.now_ms(c->cfg.sys_ctx); }

static uint32_t rnd32(mer_client_t *c)
{
	uint8_t b[4];
	c->cfg.random(c->cfg.sys_ctx, b, 4);
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Full jitter (§7.4): uniform in [0, min(cap, base * 2^n)]. */
static uint32_t backoff(mer_client_t *c)
{
	uint32_t n = c->attempt < 16 ? c->attempt : 16;
	uint64_t hi = (uint64_t)c->cfg.backoff_base_ms << n;
	if (hi > c->cfg.backoff_cap_ms)
		hi = c->cfg.backoff_cap_ms;
	if (c->attempt < 32)
		c->attempt++;
	return (uint32_t)(rnd32(c) % (hi + 1));
}

static void wait_for(mer_client_t *c, uint32_t ms)
{
	c->wait_from = now(c);
	c->wait_ms = ms;
}

/* 1008 and 401/403 mean the operator or the token said no: with
 * stop_on_policy the client stays down until mer_resume(). */
static void maybe_stop(mer_client_t *c, int code)
{
	if (c->cfg.stop_on_policy && (code == 1008 || code == 401 || code == 403))
		c->stopped = 1;
}

static mer_str_t mstr(const char *s)
{
	mer_str_t r;
	r.p = s;
	r.n = (uint32_t)strlen(s);
	return r;
}

static int ci_eq(const char *a, size_t an, const char *b)
{
	size_t i;
	if (an != strlen(b))
		return 0;
	for (i = 0; i < an; i++) {
		char x = a[i], y = b[i];
		if (x >= 'A' && x <= 'Z')
			x = (char)(x + 32);
		if (y >= 'A' && y <= 'Z')
			y = (char)(y + 32);
		if (x != y)
			return 0;
	}
	return 1;
}

/* text builder for requests, never past cap */
typedef struct {
	char *p;
	size_t len, cap;
	int err;
} sbuf;

static void s_app(sbuf *b, const char *s, size_t n)
{
	if (b->err || b->cap - b->len < n) {
		b->err = 1;
		return;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void s_str(sbuf *b, const char *s) { s_app(b, s, strlen(s)); }

static void s_u(sbuf *b, uint64_t v)
{
	char d[20];
	int n = 0;
	do {
		d[sizeof d - 1 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	s_app(b, d + sizeof d - n, (size_t)n);
}

/* percent-encode everything but RFC 3986 unreserved characters (§2) */
static void s_pct(sbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		    ch == '-' || ch == '_' || ch == '.' || ch == '~') {
			s_app(b, (const char *)&ch, 1);
		} else {
			char e[3];
			e[0] = '%';
			e[1] = hex[ch >> 4];
			e[2] = hex[ch & 15];
			s_app(b, e, 3);
		}
	}
}

/* "METHOD /path[?token=..] HTTP/1.1", Host and the token header */
static void s_request_line(mer_client_t *c, sbuf *b, const char *method, const char *path)
{
	s_str(b, method);
	s_str(b, " ");
	s_str(b, path);
	if (c->cfg.token_in_query) {
		s_str(b, "?token=");
		s_pct(b, c->cfg.token);
	}
	s_str(b, " HTTP/1.1\r\nHost: ");
	s_str(b, c->cfg.host);
	if (c->cfg.port != (c->cfg.tls ? 443 : 80)) {
		s_str(b, ":");
		s_u(b, c->cfg.port);
	}
	s_str(b, "\r\n");
	if (!c->cfg.token_in_query) {
		s_str(b, "Authorization: Bearer ");
		s_str(b, c->cfg.token);
		s_str(b, "\r\n");
	}
}

/* ---- persistence -------------------------------------------------------- */

typedef struct {
	uint32_t magic, tail, count;
	uint64_t next_seq;
} meta_t;
#define META_MAGIC 0x4d455231u /* "MER1"; change when mer_slot_t changes */

static int save_meta(mer_client_t *c)
{
	meta_t m;
	if (!c->cfg.store.save)
		return 0;
	memset(&m, 0, sizeof m);
	m.magic = META_MAGIC;
	m.tail = c->tail;
	m.count = c->count;
	m.next_seq = c->next_seq;
	return c->cfg.store.save(c->cfg.store.ctx, MER_STORE_META, &m, sizeof m) ? MER_ESTORE : 0;
}

static int save_slot(mer_client_t *c, uint32_t idx)
{
	mer_slot_t *s = &c->ring[idx];
	if (!c->cfg.store.save)
		return 0;
	return c->cfg.store.save(c->cfg.store.ctx, idx, s, offsetof(mer_slot_t, bytes) + s->len) ? MER_ESTORE : 0;
}

/* Restore what the store holds; a slot that does not look like one of our
 * batches ends the ring there (a torn write), it is never sent. */
static void restore(mer_client_t *c)
{
	meta_t m;
	uint32_t i;
	if (!c->cfg.store.load)
		return;
	if (c->cfg.store.load(c->cfg.store.ctx, MER_STORE_META, &m, sizeof m) != (long)sizeof m ||
	    m.magic != META_MAGIC || m.tail >= MER_RING_SLOTS || m.count > MER_RING_SLOTS)
		return;
	c->tail = m.tail;
	c->next_seq = m.next_seq;
	for (i = 0; i < m.count; i++) {
		uint32_t idx = (m.tail + i) % MER_RING_SLOTS;
		mer_slot_t *s = &c->ring[idx];
		long n = c->cfg.store.load(c->cfg.store.ctx, idx, s, sizeof *s);
		size_t pos = 0;
		mer_reading_t r;
		if (n < (long)offsetof(mer_slot_t, bytes) || s->len < HEADER_LEN || s->len > MER_SLOT_BYTES ||
		    (size_t)n != offsetof(mer_slot_t, bytes) + s->len || mer_batch_next(s->bytes, s->len, &pos, &r) != 1)
			break;
		s->sent = 0;
		s->fails = 0;
		/* number() saves the slot before the meta record: after a crash
		 * between the two, the counter must still move past this seq, or
		 * the next batch would reuse it (and be acked as a duplicate). */
		if (s->seq >= c->next_seq)
			c->next_seq = s->seq + 1;
		c->count++;
	}
	if (c->count < MER_RING_SLOTS)
		c->ring[(c->tail + c->count) % MER_RING_SLOTS].n = 0;
}

/* ---- the ring ---------------------------------------------------------- */

static mer_slot_t *slot_at(mer_client_t *c, uint32_t i) { return &c->ring[(c->tail + i) % MER_RING_SLOTS]; }

static mer_slot_t *open_slot(mer_client_t *c)
{
	return c->count < MER_RING_SLOTS ? slot_at(c, c->count) : NULL;
}

static uint32_t batch_limit(const mer_client_t *c)
{
	uint32_t n = c->cfg.batch_readings;
	if (c->max_batch && c->max_batch < n)
		n = c->max_batch;
	return n;
}

static int seal(mer_client_t *c)
{
	mer_slot_t *s = open_slot(c);
	int rc;
	if (!s || s->n == 0)
		return 0;
	s->seq = 0;
	s->sent = 0;
	s->fails = 0;
	s->dead = 0;
	c->count++;
	rc = save_slot(c, (c->tail + c->count - 1) % MER_RING_SLOTS);
	if (!rc)
		rc = save_meta(c);
	if ((s = open_slot(c)) != NULL)
		s->n = 0;
	return rc;
}

/* Give s its seq (§7.2: always above hello.acked). Needs a known next_seq. */
static int number(mer_client_t *c, mer_slot_t *s)
{
	int i, rc;
	if (s->seq)
		return 0;
	s->seq = c->next_seq++;
	for (i = 0; i < 8; i++)
		s->bytes[SEQ_AT + i] = (uint8_t)(s->seq >> (56 - 8 * i));
	rc = save_slot(c, (uint32_t)(s - c->ring));
	return rc ? rc : save_meta(c);
}

static void report(mer_client_t *c, mer_slot_t *s, int how, const mer_ack_t *ack)
{
	mer_ack_t a;
	if (!c->cfg.on.on_ack)
		return;
	if (ack)
		a = *ack;
	else
		memset(&a, 0, sizeof a);
	a.how = how;
	a.seq = s->seq;
	a.batch = s->bytes;
	a.batch_len = s->len;
	c->cfg.on.on_ack(c->cfg.on.user, &a);
}

static void drop_tail(mer_client_t *c, int how, const mer_ack_t *ack)
{
	report(c, slot_at(c, 0), how, ack);
	c->tail = (c->tail + 1) % MER_RING_SLOTS;
	c->count--;
}

/* Drop numbered batches with seq <= upto (§7.2 steps 2 and 5). */
static void drop_upto(mer_client_t *c, uint64_t upto, const mer_ack_t *ack)
{
	int dropped = 0;
	while (c->count > 0 && (slot_at(c, 0)->dead || (slot_at(c, 0)->seq != 0 && slot_at(c, 0)->seq <= upto))) {
		mer_slot_t *s = slot_at(c, 0);
		if (s->dead) { /* its readings live on in newer batches */
			c->tail = (c->tail + 1) % MER_RING_SLOTS;
			c->count--;
		} else {
			drop_tail(c, ack && s->seq == ack->seq ? MER_ACKED : MER_ACKED_LATER,
				  ack && s->seq == ack->seq ? ack : NULL);
		}
		dropped = 1;
	}
	if (dropped)
		(void)save_meta(c);
}

static int valid_metric(const char *m, size_t len)
{
	size_t n;
	if (len == 0 || len > 128)
		return 0;
	for (n = 0; n < len; n++) {
		char ch = m[n];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '.' || ch == ':' || ch == '/' || ch == '-'))
			return 0;
	}
	return 1;
}

enum { V_FLOAT, V_INT, V_BOOL };

static int add(mer_client_t *c, int64_t t, const char *metric, size_t mlen, int kind, double f, int64_t i)
{
	uint8_t tmp[1 + 9 + 2 + 128 + 9];
	mp_w w;
	mer_slot_t *s;
	int rc;

	if (!metric || !valid_metric(metric, mlen))
		return MER_EINVAL;
	if (kind == V_FLOAT && (f != f || f - f != 0)) /* NaN or infinity (§5.3) */
		return MER_EINVAL;
	mp_w_init(&w, tmp, sizeof tmp);
	mp_array(&w, 3);
	if (t == MER_NO_TIME)
		mp_nil(&w);
	else
		mp_i64(&w, t); /* 9 bytes always: simple and valid (§4.2) */
	mp_str(&w, metric, mlen);
	if (kind == V_FLOAT)
		mp_float(&w, f);
	else if (kind == V_INT)
		mp_int(&w, i);
	else
		mp_bool(&w, i != 0);

	s = open_slot(c);
	if (s && s->n > 0 && (s->len + w.len > MER_SLOT_BYTES || (c->max_frame && s->len + w.len > c->max_frame))) {
		if ((rc = seal(c)) != 0)
			return rc;
		s = open_slot(c);
	}
	if (!s)
		return MER_EFULL;
	if (s->n == 0) {
		mp_w h;
		mp_w_init(&h, s->bytes, sizeof s->bytes);
		mp_map(&h, 3);
		mp_cstr(&h, "type");
		mp_cstr(&h, "batch");
		mp_cstr(&h, "seq");
		mp_u64(&h, 0);
		mp_cstr(&h, "readings");
		mp_u16_array(&h, 0);
		s->len = (uint16_t)h.len;
		s->seq = 0;
		c->open_since = now(c);
	}
	if (s->len + w.len > MER_SLOT_BYTES)
		return MER_EINVAL; /* MER_SLOT_BYTES too small for one reading */
	memcpy(s->bytes + s->len, tmp, w.len);
	s->len = (uint16_t)(s->len + w.len);
	s->n++;
	s->bytes[COUNT_AT] = (uint8_t)(s->n >> 8);
	s->bytes[COUNT_AT + 1] = (uint8_t)s->n;
	if (s->n >= batch_limit(c))
		return seal(c);
	return 0;
}

static size_t slen(const char *s) { return s ? strlen(s) : 0; }
int mer_add_float(mer_client_t *c, int64_t t, const char *m, double v) { return add(c, t, m, slen(m), V_FLOAT, v, 0); }
int mer_add_int(mer_client_t *c, int64_t t, const char *m, int64_t v) { return add(c, t, m, slen(m), V_INT, 0, v); }
int mer_add_bool(mer_client_t *c, int64_t t, const char *m, int v) { return add(c, t, m, slen(m), V_BOOL, 0, v != 0); }

/* §7.3: a batch sealed under older, larger limits no longer fits the
 * latest hello. Its readings are re-added as new batches (at the end of
 * the ring, so seqs stay in ring order) and it is marked dead: never sent,
 * dropped silently when it reaches the tail. Only when the ring has room
 * for all of them, so no reading is ever in two live batches. */
static void resplit(mer_client_t *c)
{
	uint32_t i, limit = batch_limit(c), frame = c->max_frame < MER_SLOT_BYTES ? c->max_frame : MER_SLOT_BYTES;
	for (i = 0; i < c->count; i++) {
		mer_slot_t *s = slot_at(c, i);
		uint32_t per, need;
		size_t pos = 0;
		mer_reading_t r;
		if (s->dead || (s->n <= limit && s->len <= frame) || frame < HEADER_LEN + 149)
			continue;
		per = (frame - HEADER_LEN) / 149; /* readings that surely fit one batch */
		if (per > limit)
			per = limit;
		need = (s->n + per - 1) / per + 1;
		if (MER_RING_SLOTS - c->count < need + 1)
			continue; /* no room now: it is refused and counted as usual */
		(void)seal(c); /* keep the open batch's readings apart from these */
		/* Dead first: a crash in between may lose these unacked readings
		 * but can never store them twice. */
		s->dead = 1;
		s->sent = 0;
		(void)save_slot(c, (uint32_t)(s - c->ring));
		while (mer_batch_next(s->bytes, s->len, &pos, &r) == 1)
			(void)add(c, r.t_ms, r.metric.p, r.metric.n, r.kind == 0 ? V_FLOAT : r.kind == 1 ? V_INT : V_BOOL, r.f, r.i);
		(void)seal(c);
	}
}
int mer_flush(mer_client_t *c) { return seal(c); }

uint32_t mer_pending(const mer_client_t *c) { return c->count; }

uint32_t mer_open_readings(const mer_client_t *c)
{
	return c->count < MER_RING_SLOTS ? c->ring[(c->tail + c->count) % MER_RING_SLOTS].n : 0;
}

int mer_init(mer_client_t *c, const mer_config_t *cfg)
{
	if (!cfg || !cfg->host || !cfg->token || !cfg->now_ms || !cfg->random || !cfg->transport.connect ||
	    !cfg->transport.read || !cfg->transport.write || !cfg->transport.close)
		return MER_EINVAL;
	memset(c, 0, sizeof *c);
	c->cfg = *cfg;
	if (!c->cfg.batch_readings || c->cfg.batch_readings > MER_BATCH_READINGS)
		c->cfg.batch_readings = MER_BATCH_READINGS;
	if (!c->cfg.batch_age_ms)
		c->cfg.batch_age_ms = 1000;
	if (!c->cfg.window)
		c->cfg.window = 8;
	if (!c->cfg.backoff_base_ms)
		c->cfg.backoff_base_ms = 1000;
	if (!c->cfg.backoff_cap_ms)
		c->cfg.backoff_cap_ms = 60000;
	if (!c->cfg.io_timeout_ms)
		c->cfg.io_timeout_ms = 10000;
	c->state = ST_DOWN;
	restore(c);
	return 0;
}

/* ---- hello and acks (shared by WebSocket and HTTP) ---------------------- */

static void apply_hello(mer_client_t *c, const mer_hello_t *h)
{
	c->got_hello = 1;
	c->max_batch = h->max_batch ? h->max_batch : 1000;
	c->max_frame = h->max_frame ? h->max_frame : 65536;
	c->heartbeat_s = h->heartbeat_s ? h->heartbeat_s : 20;
	c->hello_time = h->time_ms;
	c->hello_at = now(c);
	drop_upto(c, h->acked, NULL);                /* §7.2 step 2 */
	if (c->next_seq <= h->acked) {                /* step 3 */
		c->next_seq = h->acked + 1;
		(void)save_meta(c);
	}
	resplit(c);                                   /* §7.3 */
	drop_upto(c, 0, NULL);                        /* a dead batch at the tail */
	if (c->cfg.on.on_hello)
		c->cfg.on.on_hello(c->cfg.on.user, h);
}

static void apply_ack(mer_client_t *c, const mer_ack_t *a)
{
	drop_upto(c, a->seq, a);
	if (c->careful && ++c->careful_acks >= c->cfg.window)
		c->careful = 0;
}

/* The server refused what we sent (1007, 1009, 1002 batch_*; HTTP 400/413).
 * With several batches in flight we cannot tell which one, so first go
 * careful (one at a time); a batch refused MAX_FAILS times on its own is
 * dropped and reported, never resent forever (§9, 1007). */
static void refused(mer_client_t *c, mer_slot_t *s)
{
	if (!c->careful || !s) {
		c->careful = 1;
		c->careful_acks = 0;
		return;
	}
	if (++s->fails >= MAX_FAILS && s == slot_at(c, 0)) {
		drop_tail(c, MER_DROPPED, NULL);
		(void)save_meta(c);
	}
}

int64_t mer_server_time_ms(const mer_client_t *c)
{
	if (!c->hello_time)
		return 0;
	return c->hello_time + (int64_t)(uint32_t)(c->cfg.now_ms(c->cfg.sys_ctx) - c->hello_at);
}

uint32_t mer_retry_in_ms(const mer_client_t *c)
{
	uint32_t el;
	if (c->stopped)
		return 0xffffffffu;
	if (c->state != ST_DOWN)
		return 0;
	el = c->cfg.now_ms(c->cfg.sys_ctx) - c->wait_from;
	return el >= c->wait_ms ? 0 : c->wait_ms - el;
}

int mer_connected(const mer_client_t *c) { return c->state == ST_WS && c->got_hello; }

void mer_resume(mer_client_t *c)
{
	c->stopped = 0;
	c->wait_ms = 0;
}

/* ---- HTTP heads (handshake answer and fallback answers) ------------------ */

static size_t head_end(const uint8_t *p, size_t n)
{
	size_t i;
	for (i = 3; i < n; i++)
		if (p[i - 3] == '\r' && p[i - 2] == '\n' && p[i - 1] == '\r' && p[i] == '\n')
			return i + 1;
	return 0;
}

/* Value of header name in head[0..n), trimmed; 0 if absent. */
static int header(const uint8_t *head, size_t n, const char *name, const char **val, size_t *vlen)
{
	size_t i = 0;
	while (i < n && head[i] != '\n') /* skip the status line */
		i++;
	while (++i < n) {
		size_t start = i, colon = 0, end;
		while (i < n && head[i] != '\n') {
			if (!colon && head[i] == ':')
				colon = i;
			i++;
		}
		end = i;
		if (end > start && head[end - 1] == '\r')
			end--;
		if (colon && ci_eq((const char *)head + start, colon - start, name)) {
			size_t v = colon + 1;
			while (v < end && (head[v] == ' ' || head[v] == '\t'))
				v++;
			while (end > v && (head[end - 1] == ' ' || head[end - 1] == '\t'))
				end--;
			*val = (const char *)head + v;
			*vlen = end - v;
			return 1;
		}
	}
	return 0;
}

static uint32_t parse_u32(const char *p, size_t n)
{
	uint64_t v = 0;
	size_t i;
	for (i = 0; i < n && p[i] >= '0' && p[i] <= '9'; i++)
		if ((v = v * 10 + (uint64_t)(p[i] - '0')) > 0xffffffffu)
			return 0xffffffffu;
	return (uint32_t)v;
}

static int status_of(const uint8_t *h, size_t n)
{
	if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
		return -1;
	return (int)parse_u32((const char *)h + 9, 3);
}

/* Read into rx until a whole head is there; its length, or <0. */
static long read_head(mer_client_t *c)
{
	uint32_t start = now(c);
	size_t end;
	while ((end = head_end(c->rx, c->rx_len)) == 0) {
		uint32_t el = now(c) - start;
		long n;
		if (el >= c->cfg.io_timeout_ms || c->rx_len == sizeof c->rx)
			return MER_EIO;
		n = c->cfg.transport.read(c->cfg.transport.ctx, c->rx + c->rx_len, sizeof c->rx - c->rx_len,
					  c->cfg.io_timeout_ms - el);
		if (n < 0)
			return MER_EIO;
		c->rx_len += (size_t)n;
	}
	return (long)end;
}

static void consume(mer_client_t *c, size_t n)
{
	memmove(c->rx, c->rx + n, c->rx_len - n);
	c->rx_len -= n;
}

static long send_all(mer_client_t *c, const uint8_t *p, size_t n)
{
	if (n == 0)
		return 0;
	return c->cfg.transport.write(c->cfg.transport.ctx, p, n) == (long)n ? 0 : MER_EIO;
}

/* Wait after a refused handshake or HTTP answer. */
static uint32_t wait_for_status(mer_client_t *c, int status)
{
	uint32_t b = backoff(c);
	switch (status) {
	case 401:
		return WAIT_AUTH_MS + b;
	case 403:
		return WAIT_POLICY_MS + b;
	case 429:
		return WAIT_LATER_MS + b;
	case 503:
		return c->retry_after_ms > b ? c->retry_after_ms : b;
	default:
		return b;
	}
}

/* ---- WebSocket (RFC 6455) ---------------------------------------------- */

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static void go_down(mer_client_t *c, int close_code, int by_server, mer_str_t code, mer_str_t msg)
{
	uint32_t wait;
	int was_up = c->state == ST_WS;
	if (was_up)
		c->cfg.transport.close(c->cfg.transport.ctx);
	c->state = ST_DOWN;
	c->rx_len = 0;
	if (c->got_hello && now(c) - c->connected_at >= HEALTHY_MS)
		c->attempt = 0; /* it was healthy (§7.4) */
	if (by_server && (close_code == 1007 || close_code == 1009 ||
			  (close_code == 1002 && (ci_eq(code.p, code.n, "batch_too_large") || ci_eq(code.p, code.n, "empty_batch"))))) {
		mer_slot_t *first = c->count > 0 && slot_at(c, 0)->sent ? slot_at(c, 0) : NULL;
		refused(c, first);
	}
	wait = backoff(c);
	if (close_code == 1008)
		wait += WAIT_POLICY_MS;
	else if (close_code == 1013)
		wait += WAIT_LATER_MS;
	wait_for(c, wait);
	maybe_stop(c, close_code);
	c->got_hello = 0;
	if (c->cfg.on.on_closed)
		c->cfg.on.on_closed(c->cfg.on.user, close_code, code, msg, wait);
}

/* One frame from us: always masked (§1), payload = p1 then p2. */
static int ws_send(mer_client_t *c, uint8_t opcode, const uint8_t *p1, size_t n1, const uint8_t *p2, size_t n2)
{
	uint8_t h[14], mask[4];
	size_t n = n1 + n2, hl = 2, done = 0, i;
	h[0] = (uint8_t)(0x80 | opcode);
	if (n < 126) {
		h[1] = (uint8_t)(0x80 | n);
	} else if (n <= 0xffff) {
		h[1] = 0x80 | 126;
		h[2] = (uint8_t)(n >> 8);
		h[3] = (uint8_t)n;
		hl = 4;
	} else {
		h[1] = 0x80 | 127;
		for (i = 0; i < 8; i++)
			h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
		hl = 10;
	}
	c->cfg.random(c->cfg.sys_ctx, mask, 4);
	memcpy(h + hl, mask, 4);
	if (send_all(c, h, hl + 4))
		return MER_EIO;
	while (done < n) { /* mask through tx, chunk by chunk: the ring keeps its bytes */
		size_t k = n - done < sizeof c->tx ? n - done : sizeof c->tx;
		for (i = 0; i < k; i++) {
			size_t at = done + i;
			c->tx[i] = (uint8_t)((at < n1 ? p1[at] : p2[at - n1]) ^ mask[at & 3]);
		}
		if (send_all(c, c->tx, k))
			return MER_EIO;
		done += k;
	}
	return 0;
}

/* Close with our own code (a broken server message, our deadline). */
static int ws_fail(mer_client_t *c, int code, const char *why)
{
	uint8_t p[2];
	p[0] = (uint8_t)(code >> 8);
	p[1] = (uint8_t)code;
	(void)ws_send(c, 0x8, p, 2, (const uint8_t *)why, strlen(why));
	go_down(c, code, 0, mstr(why), mstr(""));
	return MER_EPROTO;
}

static int ws_open(mer_client_t *c)
{
	uint8_t key[16], digest[20];
	char key64[25], accept[29];
	const char *v;
	size_t vlen;
	sha1_ctx sh;
	sbuf b;
	long hl;
	int status;
	uint32_t i;

	c->rx_len = 0;
	c->retry_after_ms = 0;
	if (c->cfg.transport.connect(c->cfg.transport.ctx, c->cfg.host, c->cfg.port, c->cfg.tls, c->cfg.io_timeout_ms)) {
		wait_for(c, backoff(c));
		if (c->cfg.on.on_closed)
			c->cfg.on.on_closed(c->cfg.on.user, 1006, mstr("connect"), mstr(""), c->wait_ms);
		return MER_EIO;
	}
	c->state = ST_WS; /* so that go_down closes the transport */
	c->got_hello = 0;
	c->cfg.random(c->cfg.sys_ctx, key, sizeof key);
	base64_encode(key, sizeof key, key64);

	b.p = (char *)c->tx;
	b.len = 0;
	b.cap = sizeof c->tx;
	b.err = 0;
	s_request_line(c, &b, "GET", "/v1/device");
	s_str(&b, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
		  "Sec-WebSocket-Protocol: meridian.v1\r\nSec-WebSocket-Key: ");
	s_str(&b, key64);
	s_str(&b, "\r\n\r\n");
	if (b.err) {
		go_down(c, 1006, 0, mstr("request does not fit MER_TX_BYTES"), mstr(""));
		return MER_EINVAL;
	}
	if (send_all(c, c->tx, b.len) || (hl = read_head(c)) < 0) {
		go_down(c, 1006, 0, mstr("handshake"), mstr(""));
		return MER_EIO;
	}
	status = status_of(c->rx, (size_t)hl);
	if (status != 101) {
		if (header(c->rx, (size_t)hl, "Retry-After", &v, &vlen))
			c->retry_after_ms = parse_u32(v, vlen) * 1000u;
		c->cfg.transport.close(c->cfg.transport.ctx);
		c->state = ST_DOWN;
		wait_for(c, wait_for_status(c, status));
		maybe_stop(c, status);
		if (c->cfg.on.on_closed)
			c->cfg.on.on_closed(c->cfg.on.user, status, mstr("http"), mstr(""), c->wait_ms);
		c->rx_len = 0;
		return status == 401 ? MER_EAUTH : MER_EIO;
	}
	sha1_init(&sh);
	sha1_update(&sh, key64, strlen(key64));
	sha1_update(&sh, WS_GUID, sizeof WS_GUID - 1);
	sha1_final(&sh, digest);
	base64_encode(digest, sizeof digest, accept);
	if (!header(c->rx, (size_t)hl, "Sec-WebSocket-Accept", &v, &vlen) || vlen != 28 || memcmp(v, accept, 28) != 0 ||
	    !header(c->rx, (size_t)hl, "Upgrade", &v, &vlen) || !ci_eq(v, vlen, "websocket") ||
	    (header(c->rx, (size_t)hl, "Sec-WebSocket-Protocol", &v, &vlen) && !ci_eq(v, vlen, "meridian.v1"))) {
		go_down(c, 1006, 0, mstr("bad handshake answer"), mstr(""));
		return MER_EPROTO;
	}
	consume(c, (size_t)hl); /* hello may already be behind the head */
	c->connected_at = c->last_rx = now(c);
	c->err_code_len = 0;
	for (i = 0; i < c->count; i++)
		slot_at(c, i)->sent = 0; /* resend everything unacked (§7.2 step 4) */
	return 0;
}

static int ws_result(mer_client_t *c, const mer_command_t *cmd, const mer_result_t *res)
{
	uint8_t head[64 + 255];
	mp_w w;
	static const uint8_t nil = 0xc0;
	if (cmd->id.n > 255)
		return 0; /* an id we cannot echo: nothing sensible to answer */
	mp_w_init(&w, head, sizeof head);
	mp_map(&w, 4);
	mp_cstr(&w, "type");
	mp_cstr(&w, "result");
	mp_cstr(&w, "id");
	mp_str(&w, cmd->id.p, cmd->id.n);
	mp_cstr(&w, "ok");
	mp_bool(&w, res->ok);
	mp_cstr(&w, "payload");
	if (res->payload && res->payload_len)
		return ws_send(c, 0x2, head, w.len, res->payload, res->payload_len);
	return ws_send(c, 0x2, head, w.len, &nil, 1);
}

static int on_message(mer_client_t *c, const uint8_t *p, size_t n)
{
	mer_msg_t m;
	if (mer_decode(p, n, &m))
		return ws_fail(c, 1007, "undecodable server message");
	switch (m.type) {
	case MER_MSG_HELLO:
		apply_hello(c, &m.u.hello);
		break;
	case MER_MSG_ACK:
		m.u.ack.how = MER_ACKED;
		apply_ack(c, &m.u.ack);
		break;
	case MER_MSG_COMMAND: {
		mer_result_t res;
		memset(&res, 0, sizeof res);
		if (c->cfg.on.on_command)
			c->cfg.on.on_command(c->cfg.on.user, &m.u.command, &res);
		if (ws_result(c, &m.u.command, &res)) {
			go_down(c, 1006, 0, mstr("write"), mstr(""));
			return MER_EIO;
		}
		break;
	}
	case MER_MSG_ERROR: /* the close frame follows; keep the code for it */
		c->err_code_len = (uint8_t)(m.u.error.code.n < sizeof c->err_code ? m.u.error.code.n : sizeof c->err_code - 1);
		if (c->err_code_len) /* a frame without "code" leaves p NULL (found by the fuzzer) */
			memcpy(c->err_code, m.u.error.code.p, c->err_code_len);
		break;
	default:
		break; /* unknown types are ignored (§3) */
	}
	return 0;
}

/* Handle every complete frame in rx. 0 while still up. */
static int ws_frames(mer_client_t *c)
{
	while (c->state == ST_WS && c->rx_len >= 2) {
		uint8_t b0 = c->rx[0], b1 = c->rx[1], op = b0 & 0x0f;
		size_t hl = 2, i;
		uint64_t plen = b1 & 0x7f;
		const uint8_t *p;
		if (plen == 126) {
			if (c->rx_len < 4)
				return 0;
			plen = (uint64_t)c->rx[2] << 8 | c->rx[3];
			hl = 4;
		} else if (plen == 127) {
			if (c->rx_len < 10)
				return 0;
			for (plen = 0, i = 0; i < 8; i++)
				plen = plen << 8 | c->rx[2 + i];
			hl = 10;
		}
		if (b0 & 0x70)
			return ws_fail(c, 1002, "reserved bits set");
		if (b1 & 0x80)
			return ws_fail(c, 1002, "masked server frame");
		if (plen > sizeof c->rx - hl)
			return ws_fail(c, 1009, "message larger than MER_RX_BYTES");
		if (c->rx_len < hl + plen)
			return 0; /* wait for the rest */
		p = c->rx + hl;
		c->last_rx = now(c);
		if ((op >= 0x8 && (plen > 125 || !(b0 & 0x80))))
			return ws_fail(c, 1002, "bad control frame");
		switch (op) {
		case 0x2:
			if (!(b0 & 0x80))
				return ws_fail(c, 1002, "fragmented message"); /* the server never fragments (§1) */
			if (on_message(c, p, (size_t)plen))
				return MER_EPROTO;
			break;
		case 0x1:
			return ws_fail(c, 1003, "text frame");
		case 0x8: { /* echo the code, then we are done (RFC 6455 5.5.1) */
			int code = plen >= 2 ? (p[0] << 8 | p[1]) : 1005;
			mer_str_t why, ecode;
			uint8_t echo[2];
			echo[0] = (uint8_t)(code >> 8);
			echo[1] = (uint8_t)code;
			(void)ws_send(c, 0x8, echo, plen >= 2 ? 2 : 0, NULL, 0);
			why.p = (const char *)p + (plen >= 2 ? 2 : 0);
			why.n = (uint32_t)(plen >= 2 ? plen - 2 : 0);
			ecode.p = c->err_code;
			ecode.n = c->err_code_len;
			go_down(c, code, 1, ecode, why);
			return MER_EPROTO;
		}
		case 0x9:
			if (ws_send(c, 0xA, p, (size_t)plen, NULL, 0)) {
				go_down(c, 1006, 0, mstr("write"), mstr(""));
				return MER_EIO;
			}
			break;
		case 0xA:
			break;
		default:
			return ws_fail(c, 1002, "unexpected opcode");
		}
		consume(c, hl + (size_t)plen);
	}
	return 0;
}

/* Send unsent batches, oldest first, up to the window (§6 pipelining). */
static int ws_pump(mer_client_t *c)
{
	uint32_t i, inflight = 0, window = c->careful ? 1 : c->cfg.window;
	for (i = 0; i < c->count; i++)
		inflight += slot_at(c, i)->sent;
	for (i = 0; i < c->count && inflight < window; i++) {
		mer_slot_t *s = slot_at(c, i);
		int rc;
		if (s->sent || s->dead)
			continue;
		if ((rc = number(c, s)) != 0)
			return rc;
		if (ws_send(c, 0x2, s->bytes, s->len, NULL, 0)) {
			go_down(c, 1006, 0, mstr("write"), mstr(""));
			return MER_EIO;
		}
		s->sent = 1;
		inflight++;
	}
	return 0;
}

int mer_poll(mer_client_t *c, uint32_t timeout_ms)
{
	mer_slot_t *open = open_slot(c);
	int rc;
	long n;
	if (open && open->n > 0 && now(c) - c->open_since >= c->cfg.batch_age_ms)
		if ((rc = seal(c)) != 0)
			return rc;
	if (c->stopped)
		return MER_ESTOPPED;
	if (c->state == ST_DOWN) {
		if (mer_retry_in_ms(c) > 0)
			return MER_EWAIT;
		if ((rc = ws_open(c)) != 0)
			return rc;
	}
	if ((rc = ws_frames(c)) != 0) /* what came with the handshake answer */
		return rc;
	if (c->got_hello && (rc = ws_pump(c)) != 0)
		return rc;
	n = c->cfg.transport.read(c->cfg.transport.ctx, c->rx + c->rx_len, sizeof c->rx - c->rx_len, timeout_ms);
	if (n < 0) {
		go_down(c, 1006, 0, mstr("connection lost"), mstr(""));
		return MER_EIO;
	}
	c->rx_len += (size_t)n;
	if ((rc = ws_frames(c)) != 0)
		return rc;
	/* Liveness: the server pings every heartbeat; two silent intervals
	 * (plus slack) mean the connection is dead though TCP has not noticed. */
	if (!c->got_hello && now(c) - c->connected_at > c->cfg.io_timeout_ms)
		return ws_fail(c, 1002, "no hello");
	if (c->got_hello && now(c) - c->last_rx > 2u * 1000u * c->heartbeat_s + c->cfg.io_timeout_ms)
		return ws_fail(c, 1001, "no frame for two heartbeats");
	if (c->got_hello && now(c) - c->connected_at >= HEALTHY_MS)
		c->attempt = 0;
	return c->got_hello && (rc = ws_pump(c)) != 0 ? rc : 0;
}

void mer_disconnect(mer_client_t *c)
{
	uint8_t p[2] = {0x03, 0xe8}; /* 1000 */
	uint32_t start = now(c);
	if (c->state != ST_WS)
		return;
	if (ws_send(c, 0x8, p, 2, NULL, 0) == 0) {
		/* Read until the server's close: acks queued before it still arrive (§8). */
		while (c->state == ST_WS && now(c) - start < c->cfg.io_timeout_ms) {
			long n = c->cfg.transport.read(c->cfg.transport.ctx, c->rx + c->rx_len, sizeof c->rx - c->rx_len, 100);
			if (n < 0)
				break;
			c->rx_len += (size_t)n;
			if (ws_frames(c))
				break;
		}
	}
	if (c->state == ST_WS)
		go_down(c, 1000, 0, mstr("disconnect"), mstr(""));
	c->wait_ms = 0; /* our own close: no reason to wait */
}

/* ---- HTTP fallback (§10) ------------------------------------------------ */

/* One request and its answer; the body lands in rx. Returns the status or <0. */
static int http_do(mer_client_t *c, const char *method, const char *path, const uint8_t *body, size_t blen,
		   const uint8_t **out, size_t *out_len)
{
	const char *v;
	size_t vlen, clen = 0;
	long hl;
	int status;
	sbuf b;

	if (c->state == ST_DOWN) {
		if (c->cfg.transport.connect(c->cfg.transport.ctx, c->cfg.host, c->cfg.port, c->cfg.tls, c->cfg.io_timeout_ms))
			return MER_EIO;
		c->state = ST_WS; /* "transport open"; never sees WebSocket frames */
		c->rx_len = 0;
	} else {
		consume(c, c->http_used); /* the previous answer's body */
	}
	c->http_used = 0;
	b.p = (char *)c->tx;
	b.len = 0;
	b.cap = sizeof c->tx;
	b.err = 0;
	s_request_line(c, &b, method, path);
	if (body) {
		s_str(&b, "Content-Type: application/msgpack\r\nContent-Length: ");
		s_u(&b, blen);
		s_str(&b, "\r\n");
	}
	s_str(&b, "\r\n");
	if (b.err)
		return MER_EINVAL;
	if (send_all(c, c->tx, b.len) || (body && send_all(c, body, blen)) || (hl = read_head(c)) < 0)
		return MER_EIO;
	status = status_of(c->rx, (size_t)hl);
	c->retry_after_ms = 0;
	if (header(c->rx, (size_t)hl, "Retry-After", &v, &vlen))
		c->retry_after_ms = parse_u32(v, vlen) * 1000u;
	c->http_close = header(c->rx, (size_t)hl, "Connection", &v, &vlen) && ci_eq(v, vlen, "close");
	if (header(c->rx, (size_t)hl, "Content-Length", &v, &vlen))
		clen = parse_u32(v, vlen);
	else
		c->http_close = 1; /* no length: we cannot find the next answer */
	consume(c, (size_t)hl);
	if (clen > sizeof c->rx)
		return MER_EIO;
	while (c->rx_len < clen) {
		long n = c->cfg.transport.read(c->cfg.transport.ctx, c->rx + c->rx_len, clen - c->rx_len, c->cfg.io_timeout_ms);
		if (n <= 0)
			return MER_EIO;
		c->rx_len += (size_t)n;
	}
	*out = c->rx;
	*out_len = clen;
	c->http_used = clen;
	return status;
}

static void http_close(mer_client_t *c)
{
	if (c->state != ST_DOWN)
		c->cfg.transport.close(c->cfg.transport.ctx);
	c->state = ST_DOWN;
	c->rx_len = 0;
	c->http_used = 0;
}

static int http_fail(mer_client_t *c, int status, const uint8_t *body, size_t len)
{
	mer_msg_t m;
	mer_str_t code = mstr(status < 0 ? "io" : "http");
	http_close(c);
	wait_for(c, status < 0 ? backoff(c) : wait_for_status(c, status));
	maybe_stop(c, status);
	if (status > 0 && body && mer_decode(body, len, &m) == 0 && m.type == MER_MSG_ERROR)
		code = m.u.error.code;
	if (c->cfg.on.on_closed)
		c->cfg.on.on_closed(c->cfg.on.user, status, code, mstr(""), c->wait_ms);
	return status == 401 ? MER_EAUTH : status < 0 ? MER_EIO : MER_EPROTO;
}

int mer_http_sync(mer_client_t *c)
{
	const uint8_t *body = NULL;
	size_t len = 0;
	mer_msg_t m;
	int status, rc;

	if (c->state != ST_DOWN)
		return MER_EINVAL; /* the WebSocket is up: use it */
	if (c->stopped)
		return MER_ESTOPPED;
	if (mer_retry_in_ms(c) > 0)
		return MER_EWAIT;
	if ((rc = seal(c)) != 0)
		return rc;
	if (c->count == 0)
		return 0; /* nothing to send: no radio time spent */
	status = http_do(c, "GET", "/v1/device/hello", NULL, 0, &body, &len);
	if (status != 200 || mer_decode(body, len, &m) || m.type != MER_MSG_HELLO)
		return http_fail(c, status == 200 ? MER_EPROTO : status, body, len);
	apply_hello(c, &m.u.hello);
	c->got_hello = 0; /* no session over HTTP */
	while (c->count > 0) {
		mer_slot_t *s = slot_at(c, 0);
		if (s->dead) {
			drop_upto(c, 0, NULL);
			continue;
		}
		if (c->http_close)
			http_close(c);
		if ((rc = number(c, s)) != 0) {
			http_close(c);
			return rc;
		}
		/* One request at a time, in seq order (§10). */
		status = http_do(c, "POST", "/v1/device/batches", s->bytes, s->len, &body, &len);
		if (status == 200 && mer_decode(body, len, &m) == 0 && m.type == MER_MSG_ACK) {
			m.u.ack.how = MER_ACKED;
			s->fails = 0;
			apply_ack(c, &m.u.ack);
			continue;
		}
		if (status == 413 || status == 400) {
			/* The same bytes fail again, except read_failed (§10). */
			if (!(mer_decode(body, len, &m) == 0 && m.type == MER_MSG_ERROR &&
			      ci_eq(m.u.error.code.p, m.u.error.code.n, "read_failed"))) {
				c->careful = 1; /* HTTP is one at a time: s is the culprit */
				refused(c, s);
			}
		}
		return http_fail(c, status, body, len);
	}
	http_close(c);
	c->attempt = 0;
	return 0;
}
