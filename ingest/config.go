package ingest

import (
	"fmt"
	"time"
)

// Config holds the ingest settings. The zero value is not valid; start from
// DefaultConfig. cmd maps these to config keys under "ingest.".
type Config struct {
	// MaxBatch is the most readings one batch may carry (hello.max_batch).
	// 1000 readings of ~25 bytes is ~25 KiB, small enough for a device's RAM
	// and big enough that per-batch overhead (one ack, one seq) is negligible.
	MaxBatch int
	// MaxFrame is the largest WebSocket message or HTTP body accepted, in
	// bytes (hello.max_frame). 64 KiB covers MaxBatch readings with long metric
	// names (1000 x ~60 bytes) and bounds the per-connection read buffer.
	MaxFrame int
	// Heartbeat is the ping interval. 20 s stays below the 60 s idle timeout
	// of common proxies and load balancers; two missed intervals close.
	Heartbeat time.Duration
	// HandshakeTimeout bounds the HTTP upgrade, so a slow client cannot hold a
	// socket before it has authenticated.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one frame write to a device.
	WriteTimeout time.Duration
	// MaxFuture and MaxPast bound a reading's timestamp relative to the
	// server clock. Generous by default: devices replay offline buffers
	// (30 days) and clocks drift (1 hour).
	MaxFuture time.Duration
	MaxPast   time.Duration

	// QueueReadings caps readings accepted but not yet committed across all
	// devices (queued or being flushed). When full, read loops stop reading
	// and TCP pushes back. 200,000 readings x ~64 bytes in memory ≈ 13 MiB.
	QueueReadings int
	// FlushSize is the most readings one flush (one transaction) takes.
	// Writers commit as soon as they are idle (group commit, see pipeline),
	// so FlushSize only bounds flushes under load, when batches queue up
	// while a commit is in flight. Measured (docs/benchmarks.md): a
	// 1,000-row commit reaches ~75% of the raw CopyFrom ceiling, a
	// 10,000-row one ~90%, because the transaction, device-row locks and
	// watermark updates are paid per flush. 10,000 rows is a ~40-70 ms COPY,
	// so acks stay well under 100 ms at full load.
	FlushSize int
	// Linger is how long a writer waits, before each commit, for more
	// batches to join it; 0 commits at once. Group commit already fills
	// flushes under load, and at low rates a linger is pure ack latency, so
	// the default is 0 (docs/benchmarks.md, "Group commit"). It can trade
	// latency for fewer transactions, e.g. on an SD card (docs/edge.md).
	// 100ms reproduces the fixed flush interval of earlier versions.
	Linger time.Duration
	// Writers is the number of flush goroutines. Devices are sharded to
	// writers by id hash, so a device's batches stay in order.
	Writers int
	// SessionQueue bounds the batches one connection may have in flight
	// (read, not yet acked). When reached the session stops reading until an
	// ack is written, so the ack queue it sizes never overflows. 32 covers a
	// device pipelining a batch every few ms across a flush of up to ~100 ms
	// (a full 10,000-reading commit, or ingest.linger = 100ms). It costs an
	// idle session nothing per slot (a chan struct{} holds no slots, and
	// acks sit in the connection core's queue only while unwritten). A
	// device that stops reading its socket is closed by WriteTimeout, not
	// buffered for.
	SessionQueue int
	// MaxConnections caps device WebSocket sessions on this node; beyond it
	// the handshake is refused with 503 and Retry-After, so a reconnect storm
	// cannot exhaust memory or file descriptors. An idle plain-TCP session
	// costs ~4.5 KiB of RSS (TLS sessions more: docs/benchmarks.md,
	// "Connections: the connection core"): 50,000 sessions ≈ 250 MiB.
	MaxConnections int
	// MaxHandshakes caps handshakes in progress (token lookup, watermark
	// reads, upgrade). Each one waits on the database pool (10 connections
	// by default on PostgreSQL), so a reconnect storm beyond a few dozen
	// concurrent handshakes only queues on the pool until the handshake
	// timeout and fails anyway (seen with firmware-sim at 1,000 connects/s).
	// 32 answers the excess at once with 503 + Retry-After instead, and at
	// ~2-5 ms a handshake still admits thousands of devices per second.
	MaxHandshakes int
	// ShutdownGrace bounds graceful shutdown: flush, ack, close 1001.
	// Shutdown returns at most shutdownMargin later whatever clients do.
	ShutdownGrace time.Duration
	// RatePauseMax bounds how long a device over its readings rate is
	// paced (its socket left unread until its bucket allows the batch)
	// before it is closed with 1013. A batch at most waits for the bucket
	// to refill (2 s with the default rate and burst), so 30 s only closes
	// a device whose limit is far below what it must send.
	RatePauseMax time.Duration
	// BlockingReaders turns off the readiness poller: every device session
	// then keeps a reader goroutine (the mode TLS sessions and non-Linux
	// builds always use). For comparison and as an escape hatch.
	BlockingReaders bool
	// Node names this server in session records and logs.
	Node string
}

// DefaultConfig returns the defaults; the comments on Config say why.
func DefaultConfig() Config {
	return Config{
		MaxBatch:         1000,
		MaxFrame:         64 << 10,
		Heartbeat:        20 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		WriteTimeout:     10 * time.Second,
		MaxFuture:        time.Hour,
		MaxPast:          30 * 24 * time.Hour,
		QueueReadings:    200_000,
		FlushSize:        10_000,
		Linger:           0,
		Writers:          2,
		SessionQueue:     32,
		MaxConnections:   50_000,
		MaxHandshakes:    32,
		ShutdownGrace:    10 * time.Second,
		RatePauseMax:     30 * time.Second,
	}
}

// Validate reports the first invalid value, naming its config key.
func (c Config) Validate() error {
	type check struct {
		ok  bool
		key string
		val any
		why string
	}
	for _, ch := range []check{
		{c.MaxBatch >= 1 && c.MaxBatch <= 100_000, "ingest.max_batch", c.MaxBatch, "must be between 1 and 100000"},
		{c.MaxFrame >= 1024 && c.MaxFrame <= 16<<20, "ingest.max_frame", c.MaxFrame, "must be between 1024 and 16777216 bytes"},
		{c.Heartbeat >= time.Second, "ingest.heartbeat", c.Heartbeat, "must be at least 1s"},
		{c.HandshakeTimeout > 0, "ingest.handshake_timeout", c.HandshakeTimeout, "must be > 0"},
		{c.WriteTimeout > 0, "ingest.write_timeout", c.WriteTimeout, "must be > 0"},
		{c.MaxFuture >= 0, "ingest.max_future", c.MaxFuture, "must be >= 0"},
		{c.MaxPast >= 0, "ingest.max_past", c.MaxPast, "must be >= 0"},
		{c.QueueReadings >= c.MaxBatch, "ingest.queue_readings", c.QueueReadings, fmt.Sprintf("must be >= ingest.max_batch (%d)", c.MaxBatch)},
		{c.FlushSize >= 1, "ingest.flush_size", c.FlushSize, "must be >= 1"},
		{c.Linger >= 0 && c.Linger <= 10*time.Second, "ingest.linger", c.Linger, "must be between 0 and 10s"},
		{c.Writers >= 1 && c.Writers <= 64, "ingest.writers", c.Writers, "must be between 1 and 64"},
		{c.SessionQueue >= 1, "ingest.session_queue", c.SessionQueue, "must be >= 1"},
		{c.MaxConnections >= 1, "ingest.max_connections", c.MaxConnections, "must be >= 1"},
		{c.MaxHandshakes >= 1, "ingest.max_handshakes", c.MaxHandshakes, "must be >= 1"},
		{c.ShutdownGrace > 0, "ingest.shutdown_grace", c.ShutdownGrace, "must be > 0"},
		{c.RatePauseMax > 0, "ingest.rate_pause_max", c.RatePauseMax, "must be > 0"},
	} {
		if !ch.ok {
			return fmt.Errorf("%s: %s, got %v", ch.key, ch.why, ch.val)
		}
	}
	return nil
}
