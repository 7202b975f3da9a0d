/* posix_glue.h - the platform side of the library on Linux: BSD sockets
 * for the transport, CLOCK_MONOTONIC, getrandom(), and one file per key
 * for persistence. This is the code an ESP32 port replaces with lwIP,
 * mbedTLS, esp_timer and NVS (see examples/esp-idf). */
#ifndef POSIX_GLUE_H
#define POSIX_GLUE_H

#include "meridian.h"

typedef struct {
	int fd;
	const char *state_dir; /* NULL: no persistence */
} posix_glue_t;

/* Fill cfg's transport, clock, entropy and (if g->state_dir) store. */
void posix_glue_config(posix_glue_t *g, mer_config_t *cfg);
uint32_t posix_now_ms(void *ctx);
int64_t posix_unix_ms(void);
void posix_sleep_ms(uint32_t ms);

#endif
