/*
 * mp.h - the small MessagePack subset Meridian v1 needs (docs/protocol.md 3).
 * The writer never writes past its buffer (it sets err instead); the reader
 * checks every length against the bytes left before it trusts it, so it is
 * safe on untrusted input and needs no allocation or recursion.
 */
#ifndef MERIDIAN_MP_H
#define MERIDIAN_MP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	uint8_t *p;
	size_t len, cap;
	int err;
} mp_w;

void mp_w_init(mp_w *w, uint8_t *buf, size_t cap);
void mp_put(mp_w *w, const void *s, size_t n);
void mp_map(mp_w *w, uint32_t n);
void mp_array(mp_w *w, uint32_t n);
void mp_str(mp_w *w, const char *s, size_t n);
void mp_cstr(mp_w *w, const char *s);
void mp_uint(mp_w *w, uint64_t v);
void mp_int(mp_w *w, int64_t v);
void mp_i64(mp_w *w, int64_t v);     /* always d3 + 8 bytes */
void mp_u64(mp_w *w, uint64_t v);    /* always cf + 8 bytes */
void mp_u16_array(mp_w *w, uint16_t n); /* always dc + 2 bytes */
void mp_nil(mp_w *w);
void mp_bool(mp_w *w, int v);
void mp_float(mp_w *w, double v);    /* float32 when exact, else float64 */

enum { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT };

typedef struct {
	int type;
	uint64_t u;      /* MP_UINT, and MP_BOOL (0/1) */
	int64_t i;       /* MP_INT: always negative */
	double f;        /* MP_FLOAT */
	const uint8_t *s;/* MP_STR, MP_BIN, MP_EXT: the bytes */
	uint32_t n;      /* their length, or the elements of an array / pairs of a map */
} mp_v;

typedef struct {
	const uint8_t *p, *end;
} mp_r;

/* Read one token. For str/bin/ext it consumes the payload; for arrays and
 * maps only the header (the caller reads or skips the elements). 0 or -1. */
int mp_next(mp_r *r, mp_v *v);
/* Skip one whole value, nested or not. 0 or -1. */
int mp_skip(mp_r *r);
/* Helpers over mp_next. */
int mp_eq(const mp_v *v, const char *s);           /* v is the str s */
int mp_read_uint(mp_r *r, uint64_t *out);          /* any integer encoding, >= 0 */
int mp_read_int(mp_r *r, int64_t *out);            /* any integer encoding in int64 */
int mp_read_str(mp_r *r, const uint8_t **s, uint32_t *n);

#endif
