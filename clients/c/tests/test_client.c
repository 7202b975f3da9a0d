/* test_client.c - the client against the scripted fake of fake.h: handshake,
 * resend and recovery (§7), close codes and their waits (§9), ping, commands,
 * persistence across a "reboot", refused batches, the ring limit, the HTTP
 * fallback (§10). */
#include "docmsgs.h"
#include "fake.h"

#include <stddef.h>

static mer_client_t cl;

/* The layout of the library's persisted meta record (meridian.c, meta_t). */
typedef struct {
	uint32_t magic, tail, count;
	uint64_t next_seq;
} meta_view;

static struct {
	int acks, later, dropped;
	uint64_t last_seq;
	int last_how;
	int closed_code;
} seen;

static void on_ack(void *u, const mer_ack_t *a)
{
	(void)u;
	seen.last_seq = a->seq;
	seen.last_how = a->how;
	if (a->how == MER_ACKED)
		seen.acks++;
	else if (a->how == MER_ACKED_LATER)
		seen.later++;
	else
		seen.dropped++;
}

static void on_command(void *u, const mer_command_t *cmd, mer_result_t *res)
{
	(void)u;
	(void)cmd;
	res->ok = 1;
}

static void on_closed(void *u, int code, mer_str_t c, mer_str_t m, uint32_t w)
{
	(void)u; (void)c; (void)m; (void)w;
	seen.closed_code = code;
}

static void start(int store, int token_in_query)
{
	mer_config_t cfg;
	fk_config(&cfg);
	cfg.token_in_query = token_in_query;
	cfg.on.on_ack = on_ack;
	cfg.on.on_command = on_command;
	cfg.on.on_closed = on_closed;
	if (store) {
		cfg.store.save = fk_save;
		cfg.store.load = fk_load;
	}
	memset(&seen, 0, sizeof seen);
	CHECK(mer_init(&cl, &cfg) == 0);
}

/* Poll until the client is connected (skipping any backoff). */
static void connect_with_hello(uint64_t acked)
{
	int i;
	fk_hello(acked);
	for (i = 0; i < 5 && !mer_connected(&cl); i++) {
		fk.clock += mer_retry_in_ms(&cl);
		(void)mer_poll(&cl, 10);
	}
	CHECK(mer_connected(&cl));
}

static uint64_t frame_seq(const frame_t *f)
{
	size_t pos = 0;
	mer_reading_t r;
	mp_r rd;
	mp_v v;
	uint32_t i, n;
	if (mer_batch_next(f->p, f->len, &pos, &r) < 0)
		return 0;
	rd.p = f->p;
	rd.end = f->p + f->len;
	(void)mp_next(&rd, &v);
	n = v.n;
	for (i = 0; i < n; i++) {
		uint64_t s;
		(void)mp_next(&rd, &v);
		if (mp_eq(&v, "seq") && mp_read_uint(&rd, &s) == 0)
			return s;
		(void)mp_skip(&rd);
	}
	return 0;
}

static void add_batch(int readings)
{
	int i;
	for (i = 0; i < readings; i++)
		CHECK(mer_add_int(&cl, 1767225600000LL + i, "c.seq", i) == 0);
	CHECK(mer_flush(&cl) == 0);
}

static void test_handshake_request(void)
{
	fk_reset();
	start(0, 0);
	connect_with_hello(0);
	CHECK(strstr(fk.request, "GET /v1/device HTTP/1.1\r\n") == fk.request);
	CHECK(strstr(fk.request, "\r\nHost: example.com:8470\r\n") != NULL);
	CHECK(strstr(fk.request, "\r\nAuthorization: Bearer tok+en/1\r\n") != NULL);
	CHECK(strstr(fk.request, "\r\nSec-WebSocket-Protocol: meridian.v1\r\n") != NULL);
	CHECK(strstr(fk.request, "\r\nSec-WebSocket-Version: 13\r\n") != NULL);

	fk_reset();
	start(0, 1);
	connect_with_hello(0);
	CHECK(strstr(fk.request, "GET /v1/device?token=tok%2Ben%2F1 HTTP/1.1\r\n") == fk.request);
	CHECK(strstr(fk.request, "Authorization") == NULL);
}

/* §7.2: resend after a lost connection under the same seq, drop what
 * hello.acked covers, continue above it. */
static void test_resend_and_recover(void)
{
	frame_t first;
	fk_reset();
	start(0, 0);
	connect_with_hello(41);
	add_batch(3);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && fk.frames[0].op == 0x2 && frame_seq(&fk.frames[0]) == 42);
	first = fk.frames[0];

	fk.drop = 1; /* lost before the ack */
	CHECK(mer_poll(&cl, 10) == MER_EIO && !mer_connected(&cl));
	connect_with_hello(41);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && fk.frames[0].len == first.len && memcmp(fk.frames[0].p, first.p, first.len) == 0);
	fk_ack(42, 0);
	(void)mer_poll(&cl, 10);
	CHECK(seen.acks == 1 && seen.last_seq == 42 && mer_pending(&cl) == 0);

	add_batch(1);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 2 && frame_seq(&fk.frames[1]) == 43);
	fk.drop = 1;
	(void)mer_poll(&cl, 10);
	connect_with_hello(43); /* it was stored; the ack was lost */
	(void)mer_poll(&cl, 10);
	CHECK(seen.later == 1 && seen.last_seq == 43 && mer_pending(&cl) == 0 && fk.nframes == 0);
	add_batch(1);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && frame_seq(&fk.frames[0]) == 44);

	/* a hello whose watermark is ahead of our counter (another writer, a
	 * lost counter): new batches go above it */
	fk.drop = 1;
	(void)mer_poll(&cl, 10);
	connect_with_hello(100);
	add_batch(1);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && frame_seq(&fk.frames[0]) == 101);
}

/* §9 and §7.4: how long each close code makes us wait. */
static void test_close_waits(void)
{
	static const struct {
		int code;
		const char *ecode;
		uint32_t min, max;
	} cases[] = {
		{1001, "shutdown", 0, 2000},
		{1011, "internal", 0, 2000},
		{1008, "session_taken_over", 300000, 302000},
		{1008, "policy", 300000, 302000},
		{1013, "rate_limited", 30000, 32000},
	};
	size_t i;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint32_t w;
		fk_reset();
		start(0, 0);
		connect_with_hello(0);
		fk_close(cases[i].code, cases[i].ecode);
		CHECK(mer_poll(&cl, 10) == MER_EPROTO);
		w = mer_retry_in_ms(&cl);
		CHECK(seen.closed_code == cases[i].code);
		CHECK(w >= cases[i].min && w <= cases[i].max);
		/* we echoed the close code */
		CHECK(fk.nframes == 1 && fk.frames[0].op == 0x8 && fk.frames[0].len == 2 &&
		      (fk.frames[0].p[0] << 8 | fk.frames[0].p[1]) == cases[i].code);
		CHECK(mer_poll(&cl, 10) == MER_EWAIT);
	}

	/* stop_on_policy: 1008 stops until mer_resume */
	fk_reset();
	start(0, 0);
	cl.cfg.stop_on_policy = 1;
	connect_with_hello(0);
	fk_close(1008, "policy");
	(void)mer_poll(&cl, 10);
	fk.clock += 3600u * 1000u;
	CHECK(mer_poll(&cl, 10) == MER_ESTOPPED && fk.connects == 1);
	mer_resume(&cl);
	connect_with_hello(0);
	CHECK(fk.connects == 2);

	/* handshake refusals */
	fk_reset();
	start(0, 0);
	fk.handshake_status = 401;
	CHECK(mer_poll(&cl, 10) == MER_EAUTH && mer_retry_in_ms(&cl) >= 15u * 60u * 1000u);
	fk_reset();
	start(0, 0);
	fk.handshake_status = 503;
	fk.handshake_extra = "Retry-After: 7\r\n";
	CHECK(mer_poll(&cl, 10) == MER_EIO && mer_retry_in_ms(&cl) >= 7000);

	/* backoff grows and stays under the cap, with jitter */
	fk_reset();
	start(0, 0);
	fk.refuse_connect = 1;
	{
		int k;
		uint32_t maxw = 0;
		for (k = 0; k < 12; k++) {
			fk.clock += mer_retry_in_ms(&cl);
			CHECK(mer_poll(&cl, 10) == MER_EIO);
			if (mer_retry_in_ms(&cl) > maxw)
				maxw = mer_retry_in_ms(&cl);
			CHECK(mer_retry_in_ms(&cl) <= 60000);
		}
		CHECK(maxw > 4000);
	}
}

static void test_ping_and_command(void)
{
	fk_reset();
	start(0, 0);
	connect_with_hello(0);
	fk_frame(0x9, (const uint8_t *)"hi", 2);
	fk_frame(0x2, doc_command, sizeof doc_command);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 2);
	CHECK(fk.frames[0].op == 0xA && fk.frames[0].len == 2 && memcmp(fk.frames[0].p, "hi", 2) == 0);
	/* the result is byte for byte the example of §4.5 */
	CHECK(fk.frames[1].op == 0x2 && fk.frames[1].len == sizeof doc_result &&
	      memcmp(fk.frames[1].p, doc_result, sizeof doc_result) == 0);
	/* an unknown message type is ignored, a text frame is refused with 1003 */
	{
		uint8_t b[32];
		mp_w w;
		mp_w_init(&w, b, sizeof b);
		mp_map(&w, 1);
		mp_cstr(&w, "type");
		mp_cstr(&w, "news");
		fk_frame(0x2, b, w.len);
	}
	(void)mer_poll(&cl, 10);
	CHECK(mer_connected(&cl));
	fk_frame(0x1, (const uint8_t *)"x", 1);
	(void)mer_poll(&cl, 10);
	CHECK(!mer_connected(&cl) && seen.closed_code == 1003);
}

/* The ring, next_seq and seqs survive a "reboot" through the store. */
static void test_persistence(void)
{
	frame_t first;
	fk_reset();
	start(1, 0);
	add_batch(2); /* sealed before any connection: no seq yet */
	start(1, 0);  /* reboot */
	CHECK(mer_pending(&cl) == 1);
	connect_with_hello(10);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && frame_seq(&fk.frames[0]) == 11);
	first = fk.frames[0];

	start(1, 0); /* reboot before the ack */
	fk.connected = 0;
	CHECK(mer_pending(&cl) == 1);
	connect_with_hello(10);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && fk.frames[0].len == first.len && memcmp(fk.frames[0].p, first.p, first.len) == 0);
	fk_ack(11, 0);
	(void)mer_poll(&cl, 10);
	CHECK(mer_pending(&cl) == 0);

	start(1, 0); /* reboot: the counter is restored too */
	fk.connected = 0;
	CHECK(mer_pending(&cl) == 0);
	add_batch(1);
	connect_with_hello(5); /* even with a lower watermark, seqs never go back */
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1 && frame_seq(&fk.frames[0]) == 12);

	/* a crash between saving a numbered slot and the meta record: the
	 * counter still moves past the slot's seq */
	{
		uint64_t saved_next;
		fk_reset();
		start(1, 0);
		add_batch(1);
		connect_with_hello(20);
		(void)mer_poll(&cl, 10); /* numbered 21, sent */
		memcpy(&saved_next, fk.blobs[MER_RING_SLOTS] + offsetof(meta_view, next_seq), 8);
		CHECK(saved_next == 22);
		saved_next = 21; /* as if the meta write was lost */
		memcpy(fk.blobs[MER_RING_SLOTS] + offsetof(meta_view, next_seq), &saved_next, 8);
		start(1, 0);
		fk.connected = 0;
		add_batch(1);
		connect_with_hello(20);
		(void)mer_poll(&cl, 10);
		CHECK(fk.nframes == 2 && frame_seq(&fk.frames[0]) == 21 && frame_seq(&fk.frames[1]) == 22);
		fk_ack(22, 0);
		(void)mer_poll(&cl, 10);
	}
}

/* §9 1007: not resent forever. */
static void test_refused_batch_dropped(void)
{
	int i;
	fk_reset();
	start(0, 0);
	connect_with_hello(0);
	add_batch(1);
	add_batch(1);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 2); /* pipelined */
	for (i = 0; i < 4 && seen.dropped == 0; i++) {
		fk_close(1007, "invalid_frame");
		(void)mer_poll(&cl, 10);
		connect_with_hello(0);
		(void)mer_poll(&cl, 10);
		CHECK(fk.nframes == 1); /* careful: one at a time */
	}
	CHECK(seen.dropped == 1 && seen.last_seq == 1 && mer_pending(&cl) == 1);
	fk_ack(2, 0);
	(void)mer_poll(&cl, 10);
	CHECK(mer_pending(&cl) == 0 && seen.acks == 1);
}

static void test_ring_full_and_bad_readings(void)
{
	mer_config_t cfg;
	int i, rc = 0;
	char longm[130];
	fk_reset();
	fk_config(&cfg);
	cfg.batch_readings = 1;
	CHECK(mer_init(&cl, &cfg) == 0);
	for (i = 0; i < MER_RING_SLOTS; i++)
		CHECK(mer_add_float(&cl, MER_NO_TIME, "t", 1.5) == 0);
	rc = mer_add_float(&cl, MER_NO_TIME, "t", 1.5);
	CHECK(rc == MER_EFULL && mer_pending(&cl) == MER_RING_SLOTS);

	start(0, 0);
	memset(longm, 'a', 129);
	longm[129] = 0;
	CHECK(mer_add_float(&cl, 0, "a b", 1) == MER_EINVAL);
	CHECK(mer_add_float(&cl, 0, "", 1) == MER_EINVAL);
	CHECK(mer_add_float(&cl, 0, longm, 1) == MER_EINVAL);
	longm[128] = 0;
	CHECK(mer_add_float(&cl, 0, longm, 1) == 0);
	{
		double zero = 0.0;
		CHECK(mer_add_float(&cl, 0, "x", zero / zero) == MER_EINVAL);
		CHECK(mer_add_float(&cl, 0, "x", 1.0 / zero) == MER_EINVAL);
	}
	CHECK(mer_add_bool(&cl, 0, "door", 1) == 0);
	CHECK(mer_open_readings(&cl) == 2);
}

/* Our batches decode back to what we added, in the compact encoding. */
static void test_batch_encoding(void)
{
	size_t pos = 0;
	mer_reading_t r;
	fk_reset();
	start(0, 0);
	CHECK(mer_add_float(&cl, 1767225600000LL, "temp", 21.5) == 0);
	CHECK(mer_add_bool(&cl, MER_NO_TIME, "door", 1) == 0);
	CHECK(mer_add_int(&cl, -5, "n", -70000) == 0);
	CHECK(mer_flush(&cl) == 0);
	connect_with_hello(41);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 1);
	/* header with fixed-width seq and count, then the readings of §4.2 */
	CHECK(memcmp(fk.frames[0].p, "\x83\xa4type\xa5" "batch\xa3seq\xcf\0\0\0\0\0\0\0\x2a\xa8readings\xdc\0\x03", 37) == 0);
	CHECK(memcmp(fk.frames[0].p + 37, "\x93\xd3\x00\x00\x01\x9b\x76\xda\xa8\x00\xa4temp\xca\x41\xac\x00\x00"
					  "\x93\xc0\xa4" "door\xc3", 28) == 0);
	CHECK(mer_batch_next(fk.frames[0].p, fk.frames[0].len, &pos, &r) == 1 && r.f == 21.5);
	CHECK(mer_batch_next(fk.frames[0].p, fk.frames[0].len, &pos, &r) == 1 && r.kind == 2 && r.i == 1);
	CHECK(mer_batch_next(fk.frames[0].p, fk.frames[0].len, &pos, &r) == 1 && r.kind == 1 && r.i == -70000 &&
	      r.t_ms == -5);
	CHECK(mer_batch_next(fk.frames[0].p, fk.frames[0].len, &pos, &r) == 0);
	CHECK(mer_server_time_ms(&cl) >= 1767225600000LL);
}

static uint32_t frame_readings(const frame_t *f)
{
	size_t pos = 0;
	mer_reading_t r;
	uint32_t n = 0;
	while (mer_batch_next(f->p, f->len, &pos, &r) == 1)
		n++;
	return n;
}

/* §7.3: limits shrank while batches sat in the ring: they are re-split
 * into batches that fit, under fresh seqs, and nothing is sent twice. */
static void test_resplit(void)
{
	int i, total = 0;
	fk_reset();
	start(0, 0);
	add_batch(5);
	fk_hello_limits(7, 2, 65536);
	for (i = 0; i < 5 && !mer_connected(&cl); i++)
		(void)mer_poll(&cl, 10);
	(void)mer_poll(&cl, 10);
	CHECK(fk.nframes == 3);
	for (i = 0; i < fk.nframes; i++) {
		CHECK(frame_seq(&fk.frames[i]) == (uint64_t)(8 + i));
		CHECK(frame_readings(&fk.frames[i]) <= 2);
		total += (int)frame_readings(&fk.frames[i]);
	}
	CHECK(total == 5);
	fk_ack(8, 0);
	fk_ack(9, 0);
	fk_ack(10, 0);
	(void)mer_poll(&cl, 10);
	CHECK(mer_pending(&cl) == 0 && seen.acks == 3);
}

/* Two silent heartbeats: the connection is dead even if TCP says nothing. */
static void test_liveness(void)
{
	int i;
	fk_reset();
	start(0, 0);
	connect_with_hello(0);
	for (i = 0; i < 100 && mer_connected(&cl); i++)
		(void)mer_poll(&cl, 1000);
	CHECK(!mer_connected(&cl) && seen.closed_code == 1001 && i >= 40);
}

static void queue_http(int status, const uint8_t *body, size_t n, const char *extra)
{
	char head[256];
	snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Type: application/msgpack\r\nContent-Length: %u\r\n%s\r\n",
		 status, (unsigned)n, extra ? extra : "");
	fk_queue(head, strlen(head));
	fk_queue(body, n);
}

static void test_http_fallback(void)
{
	uint8_t hello[256], ack1[128], ack2[128];
	size_t hn, an1, an2;
	fk_reset();
	fk.handshake_status = -1; /* no automatic answer: queue them */
	start(0, 0);
	fk_hello(5);
	hn = fk.in_len - 2;
	memcpy(hello, fk.in + 2, hn);
	fk_reset();
	fk_ack(6, 0);
	an1 = fk.in_len - 2;
	memcpy(ack1, fk.in + 2, an1);
	fk_reset();
	fk_ack(7, 1);
	an2 = fk.in_len - 2;
	memcpy(ack2, fk.in + 2, an2);
	fk_reset();
	fk.handshake_status = -1;

	add_batch(2);
	add_batch(2);
	queue_http(200, hello, hn, NULL);
	queue_http(200, ack1, an1, NULL);
	queue_http(200, ack2, an2, NULL);
	CHECK(mer_http_sync(&cl) == 0);
	CHECK(strstr(fk.request, "GET /v1/device/hello HTTP/1.1\r\n") == fk.request);
	CHECK(mer_pending(&cl) == 0 && seen.acks == 2 && seen.last_seq == 7);
	CHECK(!fk.connected);

	/* 503 with Retry-After: the batch stays, we wait at least that long */
	add_batch(1);
	queue_http(200, hello, hn, NULL);
	queue_http(503, (const uint8_t *)"", 0, "Retry-After: 9\r\n");
	CHECK(mer_http_sync(&cl) != 0 && mer_pending(&cl) == 1 && mer_retry_in_ms(&cl) >= 9000);
	CHECK(mer_http_sync(&cl) == MER_EWAIT);
}

int main(void)
{
	test_handshake_request();
	test_resend_and_recover();
	test_close_waits();
	test_ping_and_command();
	test_persistence();
	test_refused_batch_dropped();
	test_ring_full_and_bad_readings();
	test_batch_encoding();
	test_liveness();
	test_http_fallback();
	test_resplit();
	if (failures) {
		fprintf(stderr, "test_client: %d failures\n", failures);
		return 1;
	}
	printf("test_client: ok\n");
	return 0;
}
