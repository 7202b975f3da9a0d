/*
 * fuzz_decode.c - everything the library reads from the network, fed with
 * arbitrary bytes: the message decoder, the batch reader, and a connected
 * client's frame parser (through the fake transport of fake.h).
 *
 * With clang: a libFuzzer target (make fuzz). Without it, -DFUZZ_STANDALONE
 * builds a small mutation loop over the seeds in tests/corpus, run under
 * AddressSanitizer + UBSan: `fuzz_decode SECONDS seed...`.
 */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "fake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mer_client_t fz;

static void on_ack(void *u, const mer_ack_t *a)
{
	size_t pos = 0;
	mer_reading_t r;
	uint32_t i;
	(void)u;
	for (i = 0; i < a->nerrors; i++)
		(void)a->errors[i].p[a->errors[i].n ? a->errors[i].n - 1 : 0];
	while (mer_batch_next(a->batch, a->batch_len, &pos, &r) == 1)
		;
}

static void on_command(void *u, const mer_command_t *cmd, mer_result_t *res)
{
	(void)u;
	res->ok = 1;
	res->payload = cmd->payload; /* echo: exercises the result path */
	res->payload_len = cmd->payload_len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mer_msg_t m;
	mer_config_t cfg;
	size_t pos = 0;
	mer_reading_t r;
	int i;

	if (mer_decode(data, size, &m) == 0 && m.type == MER_MSG_ACK)
		for (i = 0; i < (int)m.u.ack.nerrors; i++)
			(void)m.u.ack.errors[i].p[0 * m.u.ack.errors[i].n];
	while (mer_batch_next(data, size, &pos, &r) == 1)
		;

	/* A connected client reading these bytes as server frames. */
	if (size > 4096)
		return 0;
	fk_reset();
	fk_config(&cfg);
	cfg.on.on_ack = on_ack;
	cfg.on.on_command = on_command;
	if (mer_init(&fz, &cfg) != 0)
		return 0;
	(void)mer_add_int(&fz, 1, "x", 1);
	(void)mer_flush(&fz);
	fk_hello(0);
	(void)mer_poll(&fz, 1);
	fk_queue(data, size);
	for (i = 0; i < 4 && fk.connected; i++)
		(void)mer_poll(&fz, 1);
	return 0;
}

#ifdef FUZZ_STANDALONE
#include <time.h>

static uint32_t rs = 2463534242u;
static uint32_t xr(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 17;
	rs ^= rs << 5;
	return rs;
}

static uint8_t seeds[32][2048];
static size_t seed_len[32];

int main(int argc, char **argv)
{
	int nseeds = 0, i;
	long secs = argc > 1 ? atol(argv[1]) : 10;
	time_t end = time(NULL) + secs;
	unsigned long iters = 0;
	for (i = 2; i < argc && nseeds < 32; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f)
			continue;
		seed_len[nseeds] = fread(seeds[nseeds], 1, sizeof seeds[0], f);
		fclose(f);
		LLVMFuzzerTestOneInput(seeds[nseeds], seed_len[nseeds]);
		nseeds++;
	}
	if (nseeds == 0) {
		fprintf(stderr, "usage: fuzz_decode SECONDS seed...\n");
		return 2;
	}
	while (time(NULL) < end) {
		uint8_t buf[2048];
		size_t n, k, muts;
		int s = (int)(xr() % (uint32_t)nseeds);
		n = seed_len[s];
		memcpy(buf, seeds[s], n);
		for (k = 0, muts = 1 + xr() % 4; k < muts; k++) {
			size_t at = n ? xr() % n : 0;
			switch (xr() % 6) {
			case 0: /* flip a bit */
				if (n)
					buf[at] ^= (uint8_t)(1u << (xr() % 8));
				break;
			case 1: /* an interesting byte: type and length markers */
				if (n) {
					static const uint8_t lead[] = {0xc0, 0xc1, 0xc3, 0xcc, 0xcf, 0xd3, 0xd9, 0xdb,
								       0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x7f, 0x80, 0x00};
					buf[at] = lead[xr() % sizeof lead];
				}
				break;
			case 2: /* truncate */
				n = at;
				break;
			case 3: /* insert a random byte */
				if (n < sizeof buf) {
					memmove(buf + at + 1, buf + at, n - at);
					buf[at] = (uint8_t)xr();
					n++;
				}
				break;
			case 4: /* delete a byte */
				if (n) {
					memmove(buf + at, buf + at + 1, n - at - 1);
					n--;
				}
				break;
			default: { /* splice the tail of another seed */
				int o = (int)(xr() % (uint32_t)nseeds);
				size_t from = seed_len[o] ? xr() % seed_len[o] : 0, cnt = seed_len[o] - from;
				if (at + cnt > sizeof buf)
					cnt = sizeof buf - at;
				memcpy(buf + at, seeds[o] + from, cnt);
				n = at + cnt;
			}
			}
		}
		LLVMFuzzerTestOneInput(buf, n);
		iters++;
	}
	printf("fuzz_decode: %lu inputs in %ld s, no crash\n", iters, secs);
	return 0;
}
#endif
