/*
 * meridian.h - a C99 device library for Meridian protocol v1 (docs/protocol.md).
 *
 * What it does: keeps readings in a bounded ring of encoded batches, streams
 * them over a WebSocket (RFC 6455, subprotocol meridian.v1) or posts them over
 * the HTTP fallback, drops them only when the server says they are durable
 * (ack, or hello.acked), answers pings and commands, and reconnects with the
 * waits docs/protocol.md section 9 prescribes for each close code.
 *
 * What it assumes: nothing of the OS. The caller supplies the transport
 * (TCP or TLS: connect/read/write/close), a millisecond clock, an entropy
 * source (WebSocket key, frame masks, backoff jitter) and, optionally,
 * persistence callbacks so the ring survives a reboot. All memory is inside
 * mer_client_t, whose size is fixed at compile time by the MER_* macros
 * below; the library never allocates.
 *
 * Threads: none. One mer_client_t is used by one thread at a time; every
 * callback runs inside the mer_* call that triggered it.
 */
#ifndef MERIDIAN_H
#define MERIDIAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sizes (override with -D) ------------------------------------------ */

/* Batches the ring holds (sent-but-unacked plus sealed-but-unsent plus the
 * one being filled). When it is full, mer_add_* returns MER_EFULL. */
#ifndef MER_RING_SLOTS
#define MER_RING_SLOTS 64
#endif
/* Readings per batch at most (the server's hello.max_batch also applies). */
#ifndef MER_BATCH_READINGS
#define MER_BATCH_READINGS 50
#endif
/* Bytes of one encoded batch. A reading costs 1 (array) + 9 (t) + 1..2 +
 * metric length + 1..9 (value): 50 readings with 16-byte metric names and
 * float32 values are 50 * 33 + 37 = 1687 bytes, so 2048 leaves room. */
#ifndef MER_SLOT_BYTES
#define MER_SLOT_BYTES 2048
#endif
/* Receive buffer: the largest server message (an ack with five reasons is
 * under 700 bytes; hello is 113). Bigger commands close with 1009. */
#ifndef MER_RX_BYTES
#define MER_RX_BYTES 1024
#endif
/* Send scratch: the handshake request and masked chunks of frames. */
#ifndef MER_TX_BYTES
#define MER_TX_BYTES 512
#endif
/* Ack reasons kept (the server sends at most 5). */
#define MER_MAX_ERRORS 5

/* ---- results ---------------------------------------------------------- */

enum {
	MER_OK = 0,
	MER_EFULL = -1,     /* ring full: stop sampling or drop data yourself */
	MER_EINVAL = -2,    /* bad argument (metric, value, config) */
	MER_EWAIT = -3,     /* backing off: call again after mer_retry_in_ms() */
	MER_EIO = -4,       /* transport failed (connection lost or refused) */
	MER_EPROTO = -5,    /* the server broke the protocol, or we were closed */
	MER_EAUTH = -6,     /* 401: the token is wrong (retry rarely) */
	MER_ESTORE = -7,    /* persistence callback failed */
	MER_ESTOPPED = -8   /* stop_on_policy: stopped after 1008/401/403 until mer_resume() */
};

/* t for a reading without a time: the server stamps its receive time. Use
 * only for live readings (docs/protocol.md 5.3). */
#define MER_NO_TIME INT64_MIN

/* ---- callbacks ---------------------------------------------------------- */

/* The transport: a byte stream to host:port, TLS or not. */
typedef struct {
	/* Open the connection; 0 on success. */
	int (*connect)(void *ctx, const char *host, uint16_t port, int tls, uint32_t timeout_ms);
	/* Read up to cap bytes, waiting at most timeout_ms: >0 bytes read,
	 * 0 nothing arrived in time, <0 closed or failed. */
	long (*read)(void *ctx, uint8_t *buf, size_t cap, uint32_t timeout_ms);
	/* Write all len bytes (blocking, with the platform's own timeout):
	 * len on success, <0 on failure. */
	long (*write)(void *ctx, const uint8_t *buf, size_t len);
	void (*close)(void *ctx);
	void *ctx;
} mer_transport_t;

/* Optional persistence: blobs under small integer keys (slot 0..N-1 and
 * MER_STORE_META), e.g. ESP-IDF NVS or files. The library writes a slot
 * before the meta record that points at it, so a reboot between the two
 * loses nothing that was acked-unsafe. */
#define MER_STORE_META 0xffffu
typedef struct {
	int (*save)(void *ctx, uint32_t key, const void *data, size_t len);      /* 0 ok */
	long (*load)(void *ctx, uint32_t key, void *data, size_t cap);           /* bytes, 0 absent, <0 error */
	void *ctx;
} mer_store_t;

typedef struct {
	const char *p;
	uint32_t n;
} mer_str_t;

typedef struct {
	mer_str_t device, session;
	uint64_t acked;
	int64_t time_ms;
	uint32_t max_batch, max_frame, heartbeat_s;
} mer_hello_t;

/* How a batch left the ring. */
enum {
	MER_ACKED = 0,       /* an ack: accepted/rejected/duplicate/errors are set */
	MER_ACKED_LATER = 1, /* durable: a later ack or hello.acked covers it (its own ack was lost) */
	MER_DROPPED = 2      /* refused again and again (1007/400/413): NOT stored */
};

typedef struct {
	int how;                      /* MER_ACKED, MER_ACKED_LATER, MER_DROPPED */
	uint64_t seq;
	uint32_t accepted, rejected;
	int duplicate;
	uint32_t nerrors;
	mer_str_t errors[MER_MAX_ERRORS];
	const uint8_t *batch;         /* the batch's encoded bytes (see mer_batch_next) */
	size_t batch_len;
} mer_ack_t;

typedef struct {
	mer_str_t id, name;
	const uint8_t *payload;       /* one MessagePack value (c0 = nil) */
	size_t payload_len;
} mer_command_t;

/* Filled by on_command: the result to send. payload, if set, must be one
 * complete MessagePack value; NULL sends nil. */
typedef struct {
	int ok;
	const uint8_t *payload;
	size_t payload_len;
} mer_result_t;

typedef struct {
	void (*on_hello)(void *user, const mer_hello_t *h);
	void (*on_ack)(void *user, const mer_ack_t *a);
	/* Return nothing; fill res (ok defaults to 0, payload to nil). */
	void (*on_command)(void *user, const mer_command_t *cmd, mer_result_t *res);
	/* A connection ended. close_code is the WebSocket close code (1006:
	 * lost or never opened), or the HTTP status of a refused handshake or
	 * fallback request. code/message: the server's error frame, or our own
	 * reason. wait_ms: how long we back off before the next attempt. */
	void (*on_closed)(void *user, int close_code, mer_str_t code, mer_str_t message, uint32_t wait_ms);
	void *user;
} mer_handlers_t;

typedef struct {
	const char *host;             /* for connect and the Host header */
	uint16_t port;
	int tls;                      /* passed to transport.connect */
	const char *token;            /* device token */
	int token_in_query;           /* 1: ?token= (only for stacks without headers) */

	mer_transport_t transport;
	uint32_t (*now_ms)(void *ctx);                     /* monotonic ms, may wrap */
	void (*random)(void *ctx, uint8_t *buf, size_t n); /* unpredictable bytes */
	void *sys_ctx;
	mer_store_t store;            /* optional: save == NULL keeps the ring in RAM */
	mer_handlers_t on;

	/* Tuning; 0 picks the default in brackets. */
	uint32_t batch_readings;      /* seal a batch at this many readings [MER_BATCH_READINGS] */
	uint32_t batch_age_ms;        /* ... or when its first reading is this old [1000] */
	uint32_t window;              /* batches in flight before waiting for acks [8] */
	uint32_t backoff_base_ms;     /* [1000] */
	uint32_t backoff_cap_ms;      /* [60000] */
	uint32_t io_timeout_ms;       /* connect, handshake, HTTP answer [10000] */
	/* 0: after 1008, 401 or 403 wait minutes, then retry (docs/protocol.md
	 * 9). 1: stop instead; mer_poll/mer_http_sync return MER_ESTOPPED until
	 * the application calls mer_resume() (e.g. after re-provisioning). */
	int stop_on_policy;
} mer_config_t;

/* ---- state (treat as opaque; public only so it can be static) ----------- */

typedef struct {
	uint64_t seq;                 /* 0: not numbered yet (seq is given at first send) */
	uint16_t len, n;              /* encoded bytes, readings */
	uint8_t sent;                 /* sent on the current connection */
	uint8_t fails;                /* refusals seen while it was the suspect */
	uint8_t dead;                 /* re-split into newer batches (§7.3): never sent */
	uint8_t bytes[MER_SLOT_BYTES];
} mer_slot_t;

typedef struct {
	mer_config_t cfg;
	mer_slot_t ring[MER_RING_SLOTS];
	uint32_t tail, count;         /* oldest sealed slot; sealed slots */
	uint32_t open_since;          /* now_ms of the open batch's first reading */
	uint64_t next_seq;            /* 0: unknown until the next hello */

	int state;                    /* internal */
	int careful;                  /* send one batch at a time to find a bad one */
	int stopped;                  /* stop_on_policy tripped */
	uint32_t careful_acks;
	uint32_t attempt;             /* backoff exponent */
	uint32_t wait_from, wait_ms;  /* backing off since, for how long */
	uint32_t connected_at, last_rx;
	int got_hello, close_code;
	uint32_t max_batch, max_frame, heartbeat_s;
	int64_t hello_time;
	uint32_t hello_at;
	char err_code[32];            /* last error frame's code */
	uint8_t err_code_len;
	uint8_t http_close;           /* HTTP: server asked to close after this answer */
	uint32_t retry_after_ms;      /* from a 503 */
	size_t rx_len;
	size_t http_used;             /* HTTP: bytes of rx holding the last answer's body */
	uint8_t rx[MER_RX_BYTES];
	uint8_t tx[MER_TX_BYTES];
} mer_client_t;

/* ---- API --------------------------------------------------------------- */

/* Set up c from cfg (copied) and restore the ring from cfg->store. */
int mer_init(mer_client_t *c, const mer_config_t *cfg);

/* Add one reading to the open batch; t_ms is Unix ms or MER_NO_TIME. The
 * metric must be 1-128 bytes of [A-Za-z0-9_.:/-] and a float finite
 * (checked here, so the server never rejects them). */
int mer_add_float(mer_client_t *c, int64_t t_ms, const char *metric, double v);
int mer_add_int(mer_client_t *c, int64_t t_ms, const char *metric, int64_t v);
int mer_add_bool(mer_client_t *c, int64_t t_ms, const char *metric, int v);

/* Seal the open batch now (before sleeping, or to send at once). */
int mer_flush(mer_client_t *c);

/* WebSocket mode: connect when due, send, read for up to timeout_ms,
 * handle what arrived. MER_OK while connected; MER_EWAIT while backing
 * off (sleep up to mer_retry_in_ms()); other errors describe the last
 * failure and the client is already backing off. */
int mer_poll(mer_client_t *c, uint32_t timeout_ms);

/* HTTP fallback (wake, send, sleep): GET /v1/device/hello, then POST every
 * sealed batch in seq order, one at a time. MER_OK when the ring is empty. */
int mer_http_sync(mer_client_t *c);

/* Leave the MER_ESTOPPED state (stop_on_policy) and retry at once. */
void mer_resume(mer_client_t *c);

/* Close the WebSocket with 1000 (acks not yet received stay in the ring). */
void mer_disconnect(mer_client_t *c);

uint32_t mer_pending(const mer_client_t *c);  /* sealed batches not yet acked */
uint32_t mer_open_readings(const mer_client_t *c);
uint32_t mer_retry_in_ms(const mer_client_t *c);
int mer_connected(const mer_client_t *c);     /* 1 after hello */
/* The server's clock (Unix ms) from the last hello plus our own clock;
 * 0 before any hello. For devices without a real-time clock. */
int64_t mer_server_time_ms(const mer_client_t *c);

/* ---- batches and messages ---------------------------------------------- */

typedef struct {
	int64_t t_ms;                 /* MER_NO_TIME for nil */
	mer_str_t metric;
	int kind;                     /* 0 float, 1 int, 2 bool */
	double f;
	int64_t i;
} mer_reading_t;

/* Iterate the readings of an encoded batch (mer_ack_t.batch): set *pos = 0,
 * then call until it returns 0 (end) or <0 (malformed). */
int mer_batch_next(const uint8_t *batch, size_t len, size_t *pos, mer_reading_t *r);

enum { MER_MSG_UNKNOWN = 0, MER_MSG_HELLO, MER_MSG_ACK, MER_MSG_COMMAND, MER_MSG_ERROR };
typedef struct {
	int type;
	mer_str_t type_name;
	union {
		mer_hello_t hello;
		mer_ack_t ack;
		mer_command_t command;
		struct {
			mer_str_t code, message;
		} error;
	} u;
} mer_msg_t;

/* Decode one server message (docs/protocol.md 3-4). 0 or MER_EPROTO. */
int mer_decode(const uint8_t *buf, size_t len, mer_msg_t *m);

#ifdef __cplusplus
}
#endif
#endif
