/*
 * fake.h - test helpers: a tiny assertion macro, and a scripted fake of the
 * library's own callbacks (transport, clock, entropy, store). The fake
 * answers the WebSocket handshake itself (101, or a status the test sets),
 * unmasks and records every frame the client sends, and serves whatever
 * bytes the test queues. Reads with nothing queued advance the fake clock
 * by their timeout, so backoff waits pass instantly.
 */
#ifndef FAKE_H
#define FAKE_H

#include "meridian.h"
#include "mp.h"
#include "sha1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond)                                                             \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			failures++;                                             \
		}                                                               \
	} while (0)

#define MAX_FRAMES 64
typedef struct {
	uint8_t op;
	size_t len;
	uint8_t p[4096];
} frame_t;

typedef struct {
	uint32_t clock;
	uint32_t rnd;
	int connected, connects, refuse_connect;
	int handshake_status;        /* 0: answer 101; <0: answer nothing */
	const char *handshake_extra; /* extra answer header lines */
	int drop;                    /* next read fails: the connection is lost */
	char request[1024];          /* the last handshake request */
	size_t req_len;
	uint8_t in[8192];            /* bytes the client will read */
	size_t in_len, in_pos;
	uint8_t out[16384];          /* bytes the client wrote since the handshake */
	size_t out_len;
	frame_t frames[MAX_FRAMES];  /* client frames, unmasked */
	int nframes;
	/* store */
	uint8_t blobs[MER_RING_SLOTS + 1][sizeof(mer_slot_t)];
	long blob_len[MER_RING_SLOTS + 1];
} fake_t;

static fake_t fk;

static void fk_queue(const void *p, size_t n)
{
	memcpy(fk.in + fk.in_len, p, n);
	fk.in_len += n;
}

/* a server frame: unmasked, final */
static void fk_frame(uint8_t op, const uint8_t *p, size_t n)
{
	uint8_t h[4];
	h[0] = (uint8_t)(0x80 | op);
	if (n < 126) {
		h[1] = (uint8_t)n;
		fk_queue(h, 2);
	} else {
		h[1] = 126;
		h[2] = (uint8_t)(n >> 8);
		h[3] = (uint8_t)n;
		fk_queue(h, 4);
	}
	fk_queue(p, n);
}

static void fk_hello_limits(uint64_t acked, int64_t max_batch, int64_t max_frame);
static void fk_hello(uint64_t acked) { fk_hello_limits(acked, 1000, 65536); }

static void fk_hello_limits(uint64_t acked, int64_t max_batch, int64_t max_frame)
{
	uint8_t b[256];
	mp_w w;
	mp_w_init(&w, b, sizeof b);
	mp_map(&w, 8);
	mp_cstr(&w, "type"); mp_cstr(&w, "hello");
	mp_cstr(&w, "device"); mp_cstr(&w, "dev-1");
	mp_cstr(&w, "session"); mp_cstr(&w, "0123456789abcdef");
	mp_cstr(&w, "acked"); mp_uint(&w, acked);
	mp_cstr(&w, "time"); mp_i64(&w, 1767225600000);
	mp_cstr(&w, "max_batch"); mp_int(&w, max_batch);
	mp_cstr(&w, "max_frame"); mp_int(&w, max_frame);
	mp_cstr(&w, "heartbeat"); mp_int(&w, 20);
	fk_frame(0x2, b, w.len);
}

static void fk_ack(uint64_t seq, int dup)
{
	uint8_t b[128];
	mp_w w;
	mp_w_init(&w, b, sizeof b);
	mp_map(&w, 6);
	mp_cstr(&w, "type"); mp_cstr(&w, "ack");
	mp_cstr(&w, "seq"); mp_uint(&w, seq);
	mp_cstr(&w, "accepted"); mp_uint(&w, dup ? 0 : 1);
	mp_cstr(&w, "rejected"); mp_uint(&w, 0);
	mp_cstr(&w, "duplicate"); mp_bool(&w, dup);
	mp_cstr(&w, "errors"); mp_array(&w, 0);
	fk_frame(0x2, b, w.len);
}

/* error frame then close frame, as the server does (§9) */
static void fk_close(int code, const char *ecode)
{
	uint8_t b[128], c[2];
	mp_w w;
	if (ecode) {
		mp_w_init(&w, b, sizeof b);
		mp_map(&w, 3);
		mp_cstr(&w, "type"); mp_cstr(&w, "error");
		mp_cstr(&w, "code"); mp_cstr(&w, ecode);
		mp_cstr(&w, "message"); mp_cstr(&w, "test");
		fk_frame(0x2, b, w.len);
	}
	c[0] = (uint8_t)(code >> 8);
	c[1] = (uint8_t)code;
	fk_frame(0x8, c, 2);
}

/* Parse the client's frames out of fk.out into fk.frames. */
static void fk_parse_frames(void)
{
	size_t pos = 0;
	fk.nframes = 0;
	while (pos + 6 <= fk.out_len && fk.nframes < MAX_FRAMES) {
		uint8_t *f = fk.out + pos, *mask;
		size_t hl = 2, n = f[1] & 0x7f, i;
		frame_t *fr = &fk.frames[fk.nframes];
		if (n == 126) {
			n = (size_t)f[2] << 8 | f[3];
			hl = 4;
		}
		CHECK(f[1] & 0x80); /* client frames are masked */
		mask = f + hl;
		hl += 4;
		if (pos + hl + n > fk.out_len || n > sizeof fr->p)
			break;
		fr->op = f[0] & 0x0f;
		fr->len = n;
		for (i = 0; i < n; i++)
			fr->p[i] = f[hl + i] ^ mask[i & 3];
		fk.nframes++;
		pos += hl + n;
	}
}

static int fk_connect(void *ctx, const char *host, uint16_t port, int tls, uint32_t t)
{
	(void)ctx; (void)host; (void)port; (void)tls; (void)t;
	if (fk.refuse_connect)
		return -1;
	fk.connected = 1;
	fk.connects++;
	fk.req_len = 0;
	fk.out_len = 0;
	fk.nframes = 0;
	return 0;
}

static void fk_answer_handshake(void)
{
	const char *k = strstr(fk.request, "Sec-WebSocket-Key: ");
	char key[64], accept[29], head[512];
	uint8_t d[20];
	sha1_ctx s;
	size_t n = 0;
	if (fk.handshake_status < 0)
		return; /* HTTP fallback tests queue their answers themselves */
	if (fk.handshake_status) {
		snprintf(head, sizeof head, "HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n%s\r\n", fk.handshake_status,
			 fk.handshake_extra ? fk.handshake_extra : "");
		fk_queue(head, strlen(head));
		return;
	}
	CHECK(k != NULL);
	if (!k)
		return;
	k += strlen("Sec-WebSocket-Key: ");
	while (k[n] != '\r' && n < sizeof key - 1) {
		key[n] = k[n];
		n++;
	}
	key[n] = 0;
	sha1_init(&s);
	sha1_update(&s, key, n);
	sha1_update(&s, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
	sha1_final(&s, d);
	base64_encode(d, 20, accept);
	snprintf(head, sizeof head,
		 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
		 "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: meridian.v1\r\n\r\n", accept);
	/* the answer goes before anything the test queued (hello etc.) */
	memmove(fk.in + fk.in_pos + strlen(head), fk.in + fk.in_pos, fk.in_len - fk.in_pos);
	memcpy(fk.in + fk.in_pos, head, strlen(head));
	fk.in_len += strlen(head);
}

static long fk_write(void *ctx, const uint8_t *p, size_t n)
{
	(void)ctx;
	if (!fk.connected)
		return -1;
	if (fk.req_len == 0 || !strstr(fk.request, "\r\n\r\n")) {
		memcpy(fk.request + fk.req_len, p, n < sizeof fk.request - fk.req_len - 1 ? n : 0);
		fk.req_len += n;
		fk.request[fk.req_len] = 0;
		if (strstr(fk.request, "\r\n\r\n"))
			fk_answer_handshake();
		return (long)n;
	}
	memcpy(fk.out + fk.out_len, p, n);
	fk.out_len += n;
	if (fk.handshake_status == 0)
		fk_parse_frames();
	return (long)n;
}

static long fk_read(void *ctx, uint8_t *buf, size_t cap, uint32_t t)
{
	size_t n = fk.in_len - fk.in_pos;
	(void)ctx;
	if (!fk.connected || (fk.drop && n == 0)) {
		fk.drop = 0;
		return -1;
	}
	if (n == 0) {
		fk.clock += t;
		return 0;
	}
	if (n > cap)
		n = cap;
	memcpy(buf, fk.in + fk.in_pos, n);
	fk.in_pos += n;
	if (fk.in_pos == fk.in_len)
		fk.in_pos = fk.in_len = 0;
	return (long)n;
}

static void fk_close_conn(void *ctx)
{
	(void)ctx;
	fk.connected = 0;
	fk.in_len = fk.in_pos = 0;
}

static uint32_t fk_now(void *ctx)
{
	(void)ctx;
	return fk.clock;
}

static void fk_random(void *ctx, uint8_t *b, size_t n)
{
	(void)ctx;
	while (n--) {
		fk.rnd = fk.rnd * 1103515245u + 12345u;
		*b++ = (uint8_t)(fk.rnd >> 16);
	}
}

static int fk_save(void *ctx, uint32_t key, const void *d, size_t n)
{
	uint32_t i = key == MER_STORE_META ? MER_RING_SLOTS : key;
	(void)ctx;
	memcpy(fk.blobs[i], d, n);
	fk.blob_len[i] = (long)n;
	return 0;
}

static long fk_load(void *ctx, uint32_t key, void *d, size_t cap)
{
	uint32_t i = key == MER_STORE_META ? MER_RING_SLOTS : key;
	(void)ctx;
	if ((size_t)fk.blob_len[i] > cap)
		return -1;
	memcpy(d, fk.blobs[i], (size_t)fk.blob_len[i]);
	return fk.blob_len[i];
}

static void fk_config(mer_config_t *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->host = "example.com";
	cfg->port = 8470;
	cfg->token = "tok+en/1";
	cfg->transport.connect = fk_connect;
	cfg->transport.read = fk_read;
	cfg->transport.write = fk_write;
	cfg->transport.close = fk_close_conn;
	cfg->now_ms = fk_now;
	cfg->random = fk_random;
}

static void fk_reset(void)
{
	memset(&fk, 0, sizeof fk);
	fk.clock = 1000;
	fk.rnd = 1;
}

#endif
