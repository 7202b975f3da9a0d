/*
 * meridian-stream - streams a counter to a Meridian server with the C
 * library, over the WebSocket or (--http) the HTTP fallback, and prints a
 * ledger of what the server acknowledged on stdout:
 *
 *   acked <value>      a reading the server holds durably (once per reading)
 *   dropped <value>    a reading given up after repeated refusals
 *   ack seq=.. ...     one line per batch leaving the ring
 *   closed code=..     a connection ended (and how long we back off)
 *   done produced=N pending=P
 *
 * Readings are [now, "c.seq", k] for k = --start .. --start+--count-1, so
 * each value identifies one reading. The token comes from MERIDIAN_TOKEN
 * (not a flag: flags show in ps).
 *
 * usage: meridian-stream --host H --port P [--count N] [--rate R/s]
 *        [--start K] [--http] [--state DIR] [--batch N] [--backoff MS]
 *        [--drain S] [--exit-after N]
 */
#include "meridian.h"
#include "posix_glue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mer_client_t client; /* all of the library's memory, static */

static void on_hello(void *user, const mer_hello_t *h)
{
	(void)user;
	printf("hello device=%.*s session=%.*s acked=%llu max_batch=%u\n", (int)h->device.n, h->device.p,
	       (int)h->session.n, h->session.p, (unsigned long long)h->acked, (unsigned)h->max_batch);
}

static void on_ack(void *user, const mer_ack_t *a)
{
	static const char *how[] = {"ack", "later", "dropped"};
	size_t pos = 0;
	mer_reading_t r;
	uint32_t i;
	(void)user;
	printf("ack seq=%llu how=%s accepted=%u rejected=%u dup=%d\n", (unsigned long long)a->seq, how[a->how],
	       (unsigned)a->accepted, (unsigned)a->rejected, a->duplicate);
	for (i = 0; i < a->nerrors; i++)
		printf("ack-error %.*s\n", (int)a->errors[i].n, a->errors[i].p);
	while (mer_batch_next(a->batch, a->batch_len, &pos, &r) == 1)
		printf("%s %lld\n", a->how == MER_DROPPED ? "dropped" : "acked", (long long)r.i);
}

static void on_command(void *user, const mer_command_t *cmd, mer_result_t *res)
{
	(void)user;
	printf("command id=%.*s name=%.*s\n", (int)cmd->id.n, cmd->id.p, (int)cmd->name.n, cmd->name.p);
	res->ok = 1; /* a real device runs it here; payload nil */
}

static void on_closed(void *user, int close_code, mer_str_t code, mer_str_t msg, uint32_t wait_ms)
{
	(void)user;
	printf("closed code=%d reason=%.*s message=%.*s wait_ms=%u\n", close_code, (int)code.n, code.p, (int)msg.n,
	       msg.p, (unsigned)wait_ms);
}

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
	int i;
	for (i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return i + 1 < argc ? argv[i + 1] : "";
	return def;
}

static int flag(int argc, char **argv, const char *name)
{
	int i;
	for (i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return 1;
	return 0;
}

/* Drive the chosen transport once; sleeps when backing off. */
static void step(int http, uint32_t timeout_ms)
{
	int rc = http ? mer_http_sync(&client) : mer_poll(&client, timeout_ms);
	if (rc == MER_EWAIT || (http && rc != MER_OK)) {
		uint32_t w = mer_retry_in_ms(&client);
		posix_sleep_ms(w < timeout_ms ? w : timeout_ms);
	} else if (http) {
		posix_sleep_ms(timeout_ms); /* "sleep" between wakes */
	}
}

int main(int argc, char **argv)
{
	static posix_glue_t glue;
	mer_config_t cfg;
	long long count = atoll(arg(argc, argv, "--count", "1000"));
	long long start = atoll(arg(argc, argv, "--start", "1"));
	long long exit_after = atoll(arg(argc, argv, "--exit-after", "0"));
	double rate = atof(arg(argc, argv, "--rate", "100"));
	int http = flag(argc, argv, "--http");
	uint32_t drain_ms = (uint32_t)atoi(arg(argc, argv, "--drain", "60")) * 1000u;
	const char *token = getenv("MERIDIAN_TOKEN");
	long long k = 0;
	uint32_t t0, deadline_from;
	int rc;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!token || !*token) {
		fprintf(stderr, "meridian-stream: set MERIDIAN_TOKEN\n");
		return 2;
	}
	memset(&cfg, 0, sizeof cfg);
	cfg.host = arg(argc, argv, "--host", "127.0.0.1");
	cfg.port = (uint16_t)atoi(arg(argc, argv, "--port", "8470"));
	cfg.token = token;
	cfg.batch_readings = (uint32_t)atoi(arg(argc, argv, "--batch", "0"));
	cfg.batch_age_ms = 200;
	cfg.backoff_base_ms = (uint32_t)atoi(arg(argc, argv, "--backoff", "0"));
	cfg.backoff_cap_ms = cfg.backoff_base_ms ? 8 * cfg.backoff_base_ms : 0;
	cfg.on.on_hello = on_hello;
	cfg.on.on_ack = on_ack;
	cfg.on.on_command = on_command;
	cfg.on.on_closed = on_closed;
	glue.state_dir = arg(argc, argv, "--state", NULL);
	posix_glue_config(&glue, &cfg);
	if ((rc = mer_init(&client, &cfg)) != 0) {
		fprintf(stderr, "meridian-stream: init: %d\n", rc);
		return 2;
	}
	if (mer_pending(&client))
		printf("restored pending=%u\n", (unsigned)mer_pending(&client));

	/* Produce at --rate, driving the connection in between. */
	t0 = posix_now_ms(NULL);
	while (k < count) {
		double due = (double)(uint32_t)(posix_now_ms(NULL) - t0) * rate / 1000.0;
		while (k < count && (double)k < due) {
			rc = mer_add_int(&client, posix_unix_ms(), "c.seq", start + k);
			if (rc == MER_EFULL)
				break; /* ring full: hold the sample, keep draining */
			if (rc != MER_OK) {
				fprintf(stderr, "meridian-stream: add: %d\n", rc);
				return 2;
			}
			k++;
			if (exit_after && k == exit_after) {
				printf("exiting after %lld readings\n", k);
				_exit(3); /* a "power cut": no flush, no close */
			}
		}
		step(http, 20);
	}
	mer_flush(&client);

	/* Drain: wait until every batch is acked, or give up. */
	deadline_from = posix_now_ms(NULL);
	while (mer_pending(&client) > 0 && posix_now_ms(NULL) - deadline_from < drain_ms)
		step(http, 50);
	mer_disconnect(&client);
	printf("done produced=%lld pending=%u\n", k, (unsigned)mer_pending(&client));
	return mer_pending(&client) == 0 ? 0 : 1;
}
