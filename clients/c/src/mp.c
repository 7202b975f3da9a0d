/* mp.c - see mp.h. All multi-byte numbers are big-endian (MessagePack spec). */
#include "mp.h"

#include <string.h>

void mp_w_init(mp_w *w, uint8_t *buf, size_t cap)
{
	w->p = buf;
	w->len = 0;
	w->cap = cap;
	w->err = 0;
}

void mp_put(mp_w *w, const void *s, size_t n)
{
	if (w->err || w->cap - w->len < n) {
		w->err = 1;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
}

/* lead byte, then the low n bytes of v big-endian */
static void put_be(mp_w *w, uint8_t lead, uint64_t v, int n)
{
	uint8_t b[9];
	int i;
	b[0] = lead;
	for (i = 0; i < n; i++)
		b[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	mp_put(w, b, (size_t)(1 + n));
}

static void put_u8(mp_w *w, uint8_t b) { mp_put(w, &b, 1); }

void mp_map(mp_w *w, uint32_t n)
{
	if (n <= 15)
		put_u8(w, (uint8_t)(0x80 | n));
	else if (n <= 0xffff)
		put_be(w, 0xde, n, 2);
	else
		put_be(w, 0xdf, n, 4);
}

void mp_array(mp_w *w, uint32_t n)
{
	if (n <= 15)
		put_u8(w, (uint8_t)(0x90 | n));
	else if (n <= 0xffff)
		put_be(w, 0xdc, n, 2);
	else
		put_be(w, 0xdd, n, 4);
}

void mp_u16_array(mp_w *w, uint16_t n) { put_be(w, 0xdc, n, 2); }

void mp_str(mp_w *w, const char *s, size_t n)
{
	if (n <= 31)
		put_u8(w, (uint8_t)(0xa0 | n));
	else if (n <= 0xff)
		put_be(w, 0xd9, n, 1);
	else if (n <= 0xffff)
		put_be(w, 0xda, n, 2);
	else
		put_be(w, 0xdb, (uint64_t)n, 4);
	mp_put(w, s, n);
}

void mp_cstr(mp_w *w, const char *s) { mp_str(w, s, strlen(s)); }

void mp_uint(mp_w *w, uint64_t v)
{
	if (v <= 0x7f)
		put_u8(w, (uint8_t)v);
	else if (v <= 0xff)
		put_be(w, 0xcc, v, 1);
	else if (v <= 0xffff)
		put_be(w, 0xcd, v, 2);
	else if (v <= 0xffffffffu)
		put_be(w, 0xce, v, 4);
	else
		put_be(w, 0xcf, v, 8);
}

void mp_int(mp_w *w, int64_t v)
{
	if (v >= 0)
		mp_uint(w, (uint64_t)v);
	else if (v >= -32)
		put_u8(w, (uint8_t)(int8_t)v);
	else if (v >= INT8_MIN)
		put_be(w, 0xd0, (uint64_t)v, 1);
	else if (v >= INT16_MIN)
		put_be(w, 0xd1, (uint64_t)v, 2);
	else if (v >= INT32_MIN)
		put_be(w, 0xd2, (uint64_t)v, 4);
	else
		put_be(w, 0xd3, (uint64_t)v, 8);
}

void mp_i64(mp_w *w, int64_t v) { put_be(w, 0xd3, (uint64_t)v, 8); }
void mp_u64(mp_w *w, uint64_t v) { put_be(w, 0xcf, v, 8); }
void mp_nil(mp_w *w) { put_u8(w, 0xc0); }
void mp_bool(mp_w *w, int v) { put_u8(w, v ? 0xc3 : 0xc2); }

void mp_float(mp_w *w, double v)
{
	float f = (float)v;
	if ((double)f == v) { /* exact in 32 bits: 5 bytes instead of 9 */
		uint32_t u;
		memcpy(&u, &f, 4);
		put_be(w, 0xca, u, 4);
	} else {
		uint64_t u;
		memcpy(&u, &v, 8);
		put_be(w, 0xcb, u, 8);
	}
}

/* ---- reader ------------------------------------------------------------ */

static int take(mp_r *r, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;
	if ((size_t)(r->end - r->p) < n)
		return -1;
	for (i = 0; i < n; i++)
		v = (v << 8) | r->p[i];
	r->p += n;
	*out = v;
	return 0;
}

/* payload of n bytes for str/bin/ext: honest length or error */
static int span(mp_r *r, mp_v *v, int type, uint64_t n)
{
	if (n > (uint64_t)(r->end - r->p))
		return -1;
	v->type = type;
	v->s = r->p;
	v->n = (uint32_t)n;
	r->p += n;
	return 0;
}

/* array/map header: each element takes at least one byte, so a count
 * beyond the bytes left is a lie (docs/protocol.md 3, rule 8) */
static int count(mp_r *r, mp_v *v, int type, uint64_t n)
{
	uint64_t need = type == MP_MAP ? 2 * n : n;
	if (need > (uint64_t)(r->end - r->p))
		return -1;
	v->type = type;
	v->n = (uint32_t)n;
	return 0;
}

int mp_next(mp_r *r, mp_v *v)
{
	uint64_t x;
	uint8_t b;
	if (r->p >= r->end)
		return -1;
	b = *r->p++;
	if (b <= 0x7f) {
		v->type = MP_UINT;
		v->u = b;
		return 0;
	}
	if (b >= 0xe0) {
		v->type = MP_INT;
		v->i = (int8_t)b;
		return 0;
	}
	if ((b & 0xf0) == 0x80)
		return count(r, v, MP_MAP, b & 0x0f);
	if ((b & 0xf0) == 0x90)
		return count(r, v, MP_ARRAY, b & 0x0f);
	if ((b & 0xe0) == 0xa0)
		return span(r, v, MP_STR, b & 0x1f);
	switch (b) {
	case 0xc0:
		v->type = MP_NIL;
		return 0;
	case 0xc2:
	case 0xc3:
		v->type = MP_BOOL;
		v->u = b == 0xc3;
		return 0;
	case 0xc4: case 0xc5: case 0xc6:
		if (take(r, (size_t)1 << (b - 0xc4), &x))
			return -1;
		return span(r, v, MP_BIN, x);
	case 0xc7: case 0xc8: case 0xc9: /* ext: length, type byte, data */
		if (take(r, (size_t)1 << (b - 0xc7), &x) || r->p >= r->end)
			return -1;
		r->p++;
		return span(r, v, MP_EXT, x);
	case 0xca: {
		float f;
		uint32_t u;
		if (take(r, 4, &x))
			return -1;
		u = (uint32_t)x;
		memcpy(&f, &u, 4);
		v->type = MP_FLOAT;
		v->f = f;
		return 0;
	}
	case 0xcb:
		if (take(r, 8, &x))
			return -1;
		memcpy(&v->f, &x, 8);
		v->type = MP_FLOAT;
		return 0;
	case 0xcc: case 0xcd: case 0xce: case 0xcf:
		if (take(r, (size_t)1 << (b - 0xcc), &x))
			return -1;
		v->type = MP_UINT;
		v->u = x;
		return 0;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		size_t n = (size_t)1 << (b - 0xd0);
		if (take(r, n, &x))
			return -1;
		if (n < 8 && (x >> (8 * n - 1)) & 1) /* sign-extend */
			x |= ~(uint64_t)0 << (8 * n);
		if ((int64_t)x >= 0) { /* a signed encoding of a non-negative value */
			v->type = MP_UINT;
			v->u = x;
		} else {
			v->type = MP_INT;
			v->i = (int64_t)x;
		}
		return 0;
	}
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1..16 */
		if (r->p >= r->end)
			return -1;
		r->p++;
		return span(r, v, MP_EXT, (uint64_t)1 << (b - 0xd4));
	case 0xd9: case 0xda: case 0xdb:
		if (take(r, (size_t)1 << (b - 0xd9), &x))
			return -1;
		return span(r, v, MP_STR, x);
	case 0xdc: case 0xdd:
		if (take(r, (size_t)2 << (b - 0xdc), &x))
			return -1;
		return count(r, v, MP_ARRAY, x);
	case 0xde: case 0xdf:
		if (take(r, (size_t)2 << (b - 0xde), &x))
			return -1;
		return count(r, v, MP_MAP, x);
	default: /* 0xc1 is never used */
		return -1;
	}
}

int mp_skip(mp_r *r)
{
	/* Values still to skip. Iterative, so nesting depth costs no stack;
	 * count() bounds every n by the bytes left, so this cannot overflow. */
	uint64_t pending = 1;
	mp_v v;
	while (pending > 0) {
		if (mp_next(r, &v))
			return -1;
		pending--;
		if (v.type == MP_ARRAY)
			pending += v.n;
		else if (v.type == MP_MAP)
			pending += 2 * (uint64_t)v.n;
	}
	return 0;
}

int mp_eq(const mp_v *v, const char *s)
{
	size_t n = strlen(s);
	return v->type == MP_STR && v->n == n && memcmp(v->s, s, n) == 0;
}

int mp_read_uint(mp_r *r, uint64_t *out)
{
	mp_v v;
	if (mp_next(r, &v) || v.type != MP_UINT)
		return -1;
	*out = v.u;
	return 0;
}

int mp_read_int(mp_r *r, int64_t *out)
{
	mp_v v;
	if (mp_next(r, &v))
		return -1;
	if (v.type == MP_INT)
		*out = v.i;
	else if (v.type == MP_UINT && v.u <= (uint64_t)INT64_MAX)
		*out = (int64_t)v.u;
	else
		return -1;
	return 0;
}

int mp_read_str(mp_r *r, const uint8_t **s, uint32_t *n)
{
	mp_v v;
	if (mp_next(r, &v) || v.type != MP_STR)
		return -1;
	*s = v.s;
	*n = v.n;
	return 0;
}
