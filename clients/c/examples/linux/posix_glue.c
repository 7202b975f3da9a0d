/* posix_glue.c - see posix_glue.h. Plain TCP only: put TLS in front with a
 * proxy or swap in a TLS library's read/write here. */
#define _GNU_SOURCE
#include "posix_glue.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int tcp_connect(void *ctx, const char *host, uint16_t port, int tls, uint32_t timeout_ms)
{
	posix_glue_t *g = ctx;
	struct addrinfo hints, *res, *ai;
	char svc[8];
	int fd = -1, one = 1;
	struct timeval tv;
	if (tls)
		return -1; /* see the file comment */
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(svc, sizeof svc, "%u", (unsigned)port);
	if (getaddrinfo(host, svc, &hints, &res) != 0)
		return -1;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		tv.tv_sec = (time_t)(timeout_ms / 1000);
		tv.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect and write */
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	g->fd = fd;
	return 0;
}

static long tcp_read(void *ctx, uint8_t *buf, size_t cap, uint32_t timeout_ms)
{
	posix_glue_t *g = ctx;
	struct pollfd p;
	ssize_t n;
	if (cap == 0)
		return 0;
	p.fd = g->fd;
	p.events = POLLIN;
	n = poll(&p, 1, (int)timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -1;
	if (n == 0)
		return 0;
	n = recv(g->fd, buf, cap, 0);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	return n > 0 ? (long)n : -1; /* 0: the peer closed */
}

static long tcp_write(void *ctx, const uint8_t *buf, size_t len)
{
	posix_glue_t *g = ctx;
	size_t done = 0;
	while (done < len) {
		ssize_t n = send(g->fd, buf + done, len - done, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return (long)len;
}

static void tcp_close(void *ctx)
{
	posix_glue_t *g = ctx;
	if (g->fd >= 0)
		close(g->fd);
	g->fd = -1;
}

uint32_t posix_now_ms(void *ctx)
{
	struct timespec ts;
	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

int64_t posix_unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void posix_sleep_ms(uint32_t ms)
{
	struct timespec ts;
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void entropy(void *ctx, uint8_t *buf, size_t n)
{
	(void)ctx;
	while (n > 0) {
		ssize_t k = getrandom(buf, n, 0);
		if (k <= 0)
			continue;
		buf += k;
		n -= (size_t)k;
	}
}

static void key_path(posix_glue_t *g, uint32_t key, char *path, size_t cap)
{
	if (key == MER_STORE_META)
		snprintf(path, cap, "%s/meta", g->state_dir);
	else
		snprintf(path, cap, "%s/slot-%u", g->state_dir, (unsigned)key);
}

/* Write to a temporary file, fsync, rename: a crash leaves the old or the
 * new record, never half of one. */
static int file_save(void *ctx, uint32_t key, const void *data, size_t len)
{
	posix_glue_t *g = ctx;
	char path[512], tmp[520];
	int fd, ok;
	key_path(g, key, path, sizeof path);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	ok = write(fd, data, len) == (ssize_t)len && fsync(fd) == 0;
	close(fd);
	return ok && rename(tmp, path) == 0 ? 0 : -1;
}

static long file_load(void *ctx, uint32_t key, void *data, size_t cap)
{
	posix_glue_t *g = ctx;
	char path[512];
	ssize_t n;
	int fd;
	key_path(g, key, path, sizeof path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	n = read(fd, data, cap);
	close(fd);
	return (long)n;
}

void posix_glue_config(posix_glue_t *g, mer_config_t *cfg)
{
	g->fd = -1;
	cfg->transport.connect = tcp_connect;
	cfg->transport.read = tcp_read;
	cfg->transport.write = tcp_write;
	cfg->transport.close = tcp_close;
	cfg->transport.ctx = g;
	cfg->now_ms = posix_now_ms;
	cfg->random = entropy;
	cfg->sys_ctx = g;
	if (g->state_dir) {
		cfg->store.save = file_save;
		cfg->store.load = file_load;
		cfg->store.ctx = g;
	}
}
