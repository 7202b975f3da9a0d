/* sha1.h - SHA-1 (FIPS 180-4) and base64 (RFC 4648), only what the
 * WebSocket handshake needs: Sec-WebSocket-Accept = base64(SHA-1(key + GUID)).
 * SHA-1 is used here as RFC 6455 requires, not for security. */
#ifndef MERIDIAN_SHA1_H
#define MERIDIAN_SHA1_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	uint32_t h[5];
	uint64_t bits;
	uint8_t buf[64];
	size_t used;
} sha1_ctx;

void sha1_init(sha1_ctx *c);
void sha1_update(sha1_ctx *c, const void *data, size_t n);
void sha1_final(sha1_ctx *c, uint8_t out[20]);

/* Writes 4*ceil(n/3) characters and a NUL; out must hold that many + 1. */
void base64_encode(const uint8_t *in, size_t n, char *out);

#endif
