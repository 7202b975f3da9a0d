/* test_mp.c - MessagePack reader/writer, message decoding against the
 * examples of docs/protocol.md, SHA-1 and base64. */
#include "docmsgs.h"
#include "meridian.h"
#include "mp.h"
#include "sha1.h"

#include <stdio.h>
#include <string.h>

static int failures;
#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			failures++;                                                          \
		}                                                                            \
	} while (0)

static int str_is(mer_str_t s, const char *want) { return s.n == strlen(want) && memcmp(s.p, want, s.n) == 0; }

static void test_doc_messages(void)
{
	mer_msg_t m;
	CHECK(mer_decode(doc_hello, sizeof doc_hello, &m) == 0 && m.type == MER_MSG_HELLO);
	CHECK(str_is(m.u.hello.device, "boiler-7") && str_is(m.u.hello.session, "9f2c41d07a3b55e1"));
	CHECK(m.u.hello.acked == 41 && m.u.hello.time_ms == 1767225600000LL);
	CHECK(m.u.hello.max_batch == 1000 && m.u.hello.max_frame == 65536 && m.u.hello.heartbeat_s == 20);

	CHECK(mer_decode(doc_ack, sizeof doc_ack, &m) == 0 && m.type == MER_MSG_ACK);
	CHECK(m.u.ack.seq == 42 && m.u.ack.accepted == 2 && m.u.ack.rejected == 0 && !m.u.ack.duplicate &&
	      m.u.ack.nerrors == 0);
	CHECK(mer_decode(doc_ack_partial, sizeof doc_ack_partial, &m) == 0 && m.type == MER_MSG_ACK);
	CHECK(m.u.ack.seq == 43 && m.u.ack.accepted == 1 && m.u.ack.rejected == 1 && m.u.ack.nerrors == 1);
	CHECK(str_is(m.u.ack.errors[0], "metric must be 1-128 bytes of [A-Za-z0-9_.:/-]"));
	CHECK(mer_decode(doc_ack_duplicate, sizeof doc_ack_duplicate, &m) == 0 && m.u.ack.duplicate == 1);

	CHECK(mer_decode(doc_command, sizeof doc_command, &m) == 0 && m.type == MER_MSG_COMMAND);
	CHECK(str_is(m.u.command.id, "c-17") && str_is(m.u.command.name, "reboot"));
	CHECK(m.u.command.payload_len == 10 && m.u.command.payload[0] == 0x81);

	CHECK(mer_decode(doc_error, sizeof doc_error, &m) == 0 && m.type == MER_MSG_ERROR);
	CHECK(str_is(m.u.error.code, "seq_not_increasing"));
	CHECK(str_is(m.u.error.message, "seq 7 is not greater than the previous seq 9 on this connection"));

	/* Absent fields are zero or empty (m.u is a union: no default of one
	 * type may leak into another). */
	CHECK(mer_decode((const uint8_t *)"\x81\xa4type\xa5hello", 12, &m) == 0 && m.type == MER_MSG_HELLO &&
	      m.u.hello.acked == 0 && m.u.hello.device.n == 0 && m.u.hello.max_batch == 0);
	CHECK(mer_decode((const uint8_t *)"\x81\xa4type\xa3" "ack", 10, &m) == 0 && m.type == MER_MSG_ACK &&
	      m.u.ack.seq == 0 && m.u.ack.nerrors == 0 && m.u.ack.duplicate == 0);
	CHECK(mer_decode((const uint8_t *)"\x81\xa4type\xa5" "error", 12, &m) == 0 && m.type == MER_MSG_ERROR &&
	      m.u.error.code.n == 0 && m.u.error.code.p != NULL);

	/* Types the server does not send to devices decode as unknown (ignored). */
	CHECK(mer_decode(doc_result, sizeof doc_result, &m) == 0 && m.type == MER_MSG_UNKNOWN);
	CHECK(mer_decode(doc_batch, sizeof doc_batch, &m) == 0 && m.type == MER_MSG_UNKNOWN);
}

/* Both example batches read back as the same two readings. */
static void test_batch_readings(void)
{
	const uint8_t *b[2] = {doc_batch, doc_batch_compact};
	size_t n[2] = {sizeof doc_batch, sizeof doc_batch_compact};
	int i;
	for (i = 0; i < 2; i++) {
		size_t pos = 0;
		mer_reading_t r;
		CHECK(mer_batch_next(b[i], n[i], &pos, &r) == 1);
		CHECK(r.t_ms == 1767225600000LL && r.metric.n == 4 && memcmp(r.metric.p, "temp", 4) == 0 && r.f == 21.5);
		CHECK(mer_batch_next(b[i], n[i], &pos, &r) == 1);
		CHECK(r.t_ms == MER_NO_TIME && r.f == 1.0);
		CHECK(mer_batch_next(b[i], n[i], &pos, &r) == 0);
	}
}

/* Every integer encoding of a field counts by value (§3 rule 4). */
static void test_int_encodings(void)
{
	static const int64_t vals[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295LL, 4294967296LL,
				       -1, -32, -33, -128, -129, -32768, -32769, -2147483648LL, -2147483649LL,
				       INT64_MIN, INT64_MAX};
	size_t i;
	for (i = 0; i < sizeof vals / sizeof vals[0]; i++) {
		uint8_t b[16];
		mp_w w;
		mp_r r;
		int64_t got = 7;
		mp_w_init(&w, b, sizeof b);
		mp_int(&w, vals[i]);
		r.p = b;
		r.end = b + w.len;
		CHECK(!w.err && mp_read_int(&r, &got) == 0 && got == vals[i] && r.p == r.end);
	}
	{ /* hello with acked as int64 (d3), max_batch as uint32 (ce) */
		uint8_t b[128];
		mp_w w;
		mer_msg_t m;
		mp_w_init(&w, b, sizeof b);
		mp_map(&w, 3);
		mp_cstr(&w, "acked"); mp_i64(&w, 300);
		mp_cstr(&w, "max_batch"); mp_put(&w, "\xce\x00\x00\x00\x10", 5);
		mp_cstr(&w, "type"); mp_cstr(&w, "hello");
		CHECK(mer_decode(b, w.len, &m) == 0 && m.type == MER_MSG_HELLO && m.u.hello.acked == 300 &&
		      m.u.hello.max_batch == 16);
	}
}

static void test_rejects(void)
{
	mer_msg_t m;
	uint8_t b[256];
	memcpy(b, doc_ack, sizeof doc_ack);
	b[sizeof doc_ack] = 0xc0;
	CHECK(mer_decode(b, sizeof doc_ack + 1, &m) != 0);      /* trailing byte */
	CHECK(mer_decode(doc_ack, sizeof doc_ack - 1, &m) != 0);  /* truncated */
	CHECK(mer_decode((const uint8_t *)"\x92\x01\x02", 3, &m) != 0); /* not a map */
	CHECK(mer_decode((const uint8_t *)"\x81\xa3seq\x01", 6, &m) != 0); /* no type */
	CHECK(mer_decode((const uint8_t *)"\x81\xa4type\x01", 7, &m) != 0); /* type not a str */
	CHECK(mer_decode((const uint8_t *)"\xdf\xff\xff\xff\xff", 5, &m) != 0); /* lying map length */
	CHECK(mer_decode((const uint8_t *)"\x81\xa4type\xdb\xff\xff\xff\xff", 11, &m) != 0); /* lying str */
	/* negative seq where a uint is required */
	CHECK(mer_decode((const uint8_t *)"\x82\xa4type\xa3" "ack" "\xa3seq\xff", 15, &m) != 0);
	CHECK(mer_decode((const uint8_t *)"", 0, &m) != 0);
}

/* Unknown keys of any type are skipped, nested ones too (§3). */
static void test_skip_unknown(void)
{
	uint8_t b[256];
	mp_w w;
	mer_msg_t m;
	mp_w_init(&w, b, sizeof b);
	mp_map(&w, 4);
	mp_cstr(&w, "future"); mp_map(&w, 2);
	mp_cstr(&w, "a"); mp_array(&w, 3); mp_nil(&w); mp_float(&w, 0.1); mp_map(&w, 0);
	mp_cstr(&w, "b"); mp_array(&w, 3); mp_put(&w, "\xc4\x02xy\xd5\x01zz\xc7\x01\x05q", 12);
	mp_cstr(&w, "type"); mp_cstr(&w, "ack");
	mp_cstr(&w, "seq"); mp_uint(&w, 9);
	mp_cstr(&w, "errors"); mp_array(&w, 7);
	{
		int i;
		for (i = 0; i < 7; i++)
			mp_cstr(&w, "e");
	}
	CHECK(!w.err);
	CHECK(mer_decode(b, w.len, &m) == 0 && m.type == MER_MSG_ACK && m.u.ack.seq == 9 &&
	      m.u.ack.nerrors == MER_MAX_ERRORS);
}

static void test_writer_bounds(void)
{
	uint8_t b[4];
	mp_w w;
	mp_w_init(&w, b, sizeof b);
	mp_cstr(&w, "abcd");
	CHECK(w.err); /* and nothing after the error is written */
	mp_nil(&w);
	CHECK(w.err && w.len <= sizeof b);
}

static void test_float_encoding(void)
{
	uint8_t b[16];
	mp_w w;
	mp_w_init(&w, b, sizeof b);
	mp_float(&w, 21.5); /* exact in float32: ca 41 ac 00 00 (§4.2) */
	CHECK(w.len == 5 && memcmp(b, "\xca\x41\xac\x00\x00", 5) == 0);
	mp_w_init(&w, b, sizeof b);
	mp_float(&w, 0.1); /* not exact: float64 */
	CHECK(w.len == 9 && b[0] == 0xcb);
}

static void test_sha1_base64(void)
{
	/* RFC 6455 section 1.3's example key and accept value */
	const char *key = "dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
	uint8_t d[20];
	char out[32];
	sha1_ctx s;
	sha1_init(&s);
	sha1_update(&s, key, strlen(key));
	sha1_final(&s, d);
	base64_encode(d, 20, out);
	CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
	/* FIPS 180 "abc" and the 2-block message */
	sha1_init(&s);
	sha1_update(&s, "abc", 3);
	sha1_final(&s, d);
	CHECK(memcmp(d, "\xa9\x99\x3e\x36\x47\x06\x81\x6a\xba\x3e\x25\x71\x78\x50\xc2\x6c\x9c\xd0\xd8\x9d", 20) == 0);
	sha1_init(&s);
	sha1_update(&s, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56);
	sha1_final(&s, d);
	CHECK(memcmp(d, "\x84\x98\x3e\x44\x1c\x3b\xd2\x6e\xba\xae\x4a\xa1\xf9\x51\x29\xe5\xe5\x46\x70\xf1", 20) == 0);
	base64_encode((const uint8_t *)"ab", 2, out);
	CHECK(strcmp(out, "YWI=") == 0);
	base64_encode((const uint8_t *)"a", 1, out);
	CHECK(strcmp(out, "YQ==") == 0);
}

int main(void)
{
	test_doc_messages();
	test_batch_readings();
	test_int_encodings();
	test_rejects();
	test_skip_unknown();
	test_writer_bounds();
	test_float_encoding();
	test_sha1_base64();
	if (failures) {
		fprintf(stderr, "test_mp: %d failures\n", failures);
		return 1;
	}
	printf("test_mp: ok\n");
	return 0;
}
