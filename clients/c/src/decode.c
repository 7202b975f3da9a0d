/*
 * decode.c - server messages (docs/protocol.md 4) and the readings of our
 * own encoded batches. Every input may be hostile (it is fuzzed): the reader
 * checks lengths before use, integer fields accept every encoding, unknown
 * keys of any type are skipped, and unknown message types are not errors.
 */
#include "meridian.h"
#include "mp.h"

#include <string.h>

static mer_str_t str_of(const mp_v *v)
{
	mer_str_t s;
	s.p = (const char *)v->s;
	s.n = v->n;
	return s;
}

/* A uint field that we keep in 32 bits: larger values saturate. */
static int read_u32(mp_r *r, uint32_t *out)
{
	uint64_t u;
	if (mp_read_uint(r, &u))
		return -1;
	*out = u > 0xffffffffu ? 0xffffffffu : (uint32_t)u;
	return 0;
}

static int read_string(mp_r *r, mer_str_t *out)
{
	mp_v v;
	if (mp_next(r, &v) || v.type != MP_STR)
		return -1;
	*out = str_of(&v);
	return 0;
}

static int hello_field(mp_r *r, const mp_v *k, mer_hello_t *h)
{
	if (mp_eq(k, "device"))
		return read_string(r, &h->device);
	if (mp_eq(k, "session"))
		return read_string(r, &h->session);
	if (mp_eq(k, "acked"))
		return mp_read_uint(r, &h->acked);
	if (mp_eq(k, "time"))
		return mp_read_int(r, &h->time_ms);
	if (mp_eq(k, "max_batch"))
		return read_u32(r, &h->max_batch);
	if (mp_eq(k, "max_frame"))
		return read_u32(r, &h->max_frame);
	if (mp_eq(k, "heartbeat"))
		return read_u32(r, &h->heartbeat_s);
	return mp_skip(r);
}

static int ack_field(mp_r *r, const mp_v *k, mer_ack_t *a)
{
	mp_v v;
	uint32_t i;
	if (mp_eq(k, "seq"))
		return mp_read_uint(r, &a->seq);
	if (mp_eq(k, "accepted"))
		return read_u32(r, &a->accepted);
	if (mp_eq(k, "rejected"))
		return read_u32(r, &a->rejected);
	if (mp_eq(k, "duplicate")) {
		if (mp_next(r, &v) || v.type != MP_BOOL)
			return -1;
		a->duplicate = (int)v.u;
		return 0;
	}
	if (mp_eq(k, "errors")) {
		if (mp_next(r, &v))
			return -1;
		if (v.type == MP_NIL)
			return 0;
		if (v.type != MP_ARRAY)
			return -1;
		for (i = 0; i < v.n; i++) {
			mer_str_t s;
			if (read_string(r, &s))
				return -1;
			if (a->nerrors < MER_MAX_ERRORS)
				a->errors[a->nerrors++] = s;
		}
		return 0;
	}
	return mp_skip(r);
}

static int command_field(mp_r *r, const mp_v *k, mer_command_t *c)
{
	if (mp_eq(k, "id"))
		return read_string(r, &c->id);
	if (mp_eq(k, "name"))
		return read_string(r, &c->name);
	if (mp_eq(k, "payload")) {
		const uint8_t *start = r->p;
		if (mp_skip(r))
			return -1;
		c->payload = start;
		c->payload_len = (size_t)(r->p - start);
		return 0;
	}
	return mp_skip(r);
}

static int error_field(mp_r *r, const mp_v *k, mer_msg_t *m)
{
	if (mp_eq(k, "code"))
		return read_string(r, &m->u.error.code);
	if (mp_eq(k, "message"))
		return read_string(r, &m->u.error.message);
	return mp_skip(r);
}

int mer_decode(const uint8_t *buf, size_t len, mer_msg_t *m)
{
	static const uint8_t nil = 0xc0;
	mp_r r;
	mp_v top, k;
	uint32_t i;
	int found = 0;

	memset(m, 0, sizeof *m);
	/* Pass 1: one map, nothing after it, and its "type" (keys may come
	 * in any order). */
	r.p = buf;
	r.end = buf + len;
	if (mp_next(&r, &top) || top.type != MP_MAP)
		return MER_EPROTO;
	for (i = 0; i < top.n; i++) {
		if (mp_next(&r, &k) || k.type != MP_STR)
			return MER_EPROTO;
		if (mp_eq(&k, "type")) {
			if (read_string(&r, &m->type_name))
				return MER_EPROTO;
			found = 1;
		} else if (mp_skip(&r)) {
			return MER_EPROTO;
		}
	}
	if (r.p != r.end || !found)
		return MER_EPROTO;

#define IS(name) (m->type_name.n == sizeof(name) - 1 && memcmp(m->type_name.p, name, sizeof(name) - 1) == 0)
	if (IS("hello"))
		m->type = MER_MSG_HELLO;
	else if (IS("ack"))
		m->type = MER_MSG_ACK;
	else if (IS("command"))
		m->type = MER_MSG_COMMAND;
	else if (IS("error"))
		m->type = MER_MSG_ERROR;
	else
		return 0; /* a type we do not know: ignore it (docs/protocol.md 3) */
#undef IS
	/* Defaults for absent fields (u is a union: only for this type). */
	if (m->type == MER_MSG_COMMAND) {
		m->u.command.payload = &nil;
		m->u.command.payload_len = 1;
		m->u.command.id.p = m->u.command.name.p = "";
	} else if (m->type == MER_MSG_ERROR) {
		m->u.error.code.p = m->u.error.message.p = "";
	} else if (m->type == MER_MSG_HELLO) {
		m->u.hello.device.p = m->u.hello.session.p = "";
	}

	/* Pass 2: the fields of that type. */
	r.p = buf;
	(void)mp_next(&r, &top);
	for (i = 0; i < top.n; i++) {
		int rc;
		(void)mp_next(&r, &k);
		if (mp_eq(&k, "type"))
			rc = mp_skip(&r);
		else if (m->type == MER_MSG_HELLO)
			rc = hello_field(&r, &k, &m->u.hello);
		else if (m->type == MER_MSG_ACK)
			rc = ack_field(&r, &k, &m->u.ack);
		else if (m->type == MER_MSG_COMMAND)
			rc = command_field(&r, &k, &m->u.command);
		else
			rc = error_field(&r, &k, m);
		if (rc)
			return MER_EPROTO;
	}
	return 0;
}

/* Our batches: {"type":"batch","seq":..,"readings":[[t,metric,value],..]}.
 * *pos 0 means "find the readings array"; afterwards it is the offset of
 * the next reading. The count is not tracked: the array is the map's last
 * value, so the readings end where the bytes end. */
int mer_batch_next(const uint8_t *batch, size_t len, size_t *pos, mer_reading_t *out)
{
	mp_r r;
	mp_v v;
	r.p = batch;
	r.end = batch + len;
	if (*pos == 0) {
		mp_v top, k;
		uint32_t i;
		int found = 0;
		if (mp_next(&r, &top) || top.type != MP_MAP)
			return -1;
		for (i = 0; i < top.n && !found; i++) {
			if (mp_next(&r, &k) || k.type != MP_STR)
				return -1;
			if (mp_eq(&k, "readings")) {
				if (mp_next(&r, &v) || v.type != MP_ARRAY)
					return -1;
				found = 1;
			} else if (mp_skip(&r)) {
				return -1;
			}
		}
		if (!found)
			return -1;
	} else {
		if (*pos > len)
			return -1;
		r.p = batch + *pos;
	}
	if (r.p == r.end)
		return 0;
	if (mp_next(&r, &v) || v.type != MP_ARRAY || v.n != 3)
		return -1;
	if (mp_next(&r, &v))
		return -1;
	if (v.type == MP_NIL)
		out->t_ms = MER_NO_TIME;
	else if (v.type == MP_INT)
		out->t_ms = v.i;
	else if (v.type == MP_UINT && v.u <= (uint64_t)INT64_MAX)
		out->t_ms = (int64_t)v.u;
	else
		return -1;
	if (read_string(&r, &out->metric))
		return -1;
	if (mp_next(&r, &v))
		return -1;
	out->f = 0;
	out->i = 0;
	switch (v.type) {
	case MP_FLOAT:
		out->kind = 0;
		out->f = v.f;
		break;
	case MP_UINT:
		if (v.u > (uint64_t)INT64_MAX)
			return -1;
		out->kind = 1;
		out->i = (int64_t)v.u;
		out->f = (double)out->i;
		break;
	case MP_INT:
		out->kind = 1;
		out->i = v.i;
		out->f = (double)v.i;
		break;
	case MP_BOOL:
		out->kind = 2;
		out->i = (int64_t)v.u;
		out->f = (double)v.u;
		break;
	default:
		return -1;
	}
	*pos = (size_t)(r.p - batch);
	return 1;
}
