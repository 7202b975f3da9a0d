// Package wsconn is Meridian's one WebSocket connection core, shared by the
// device sessions (ingest) and the dashboard's /v1/live feed. It owns what
// both used to hand-roll: frame parsing and RFC 6455 checks (masking,
// reserved bits, control frames, fragmentation), ping/pong, idle deadlines,
// the single writer, named close codes and the one close path. The device and
// live protocols sit on top as a Handler.
//
// It is a leaf beside ingest/telemetry and ingest/wire: it imports nothing
// of Meridian's, so the dashboard uses it without depending on the device
// endpoint (package ingest).
//
// Memory model: an idle connection holds no goroutine and no buffer. An
// Engine drives every connection:
//   - reads are readiness-driven: on Linux, plain TCP sockets are watched by
//     one epoll goroutine (EPOLLONESHOT); when bytes arrive a reader
//     goroutine takes a bufio.Reader from a pool, reads and handles every
//     complete message buffered, gives the reader back and re-arms. TLS
//     connections, net.Pipe and other platforms keep one blocking reader
//     goroutine per connection, but it waits on a 1-byte array inside Conn
//     and takes the pooled buffer only once a frame starts (crypto/tls
//     decrypts in its own buffers, so readiness of the socket says nothing
//     about a readable record). Those plain TCP sockets are owned as a
//     bare fd, not a *net.TCPConn (rawconn_linux.go): the runtime netpoller
//     sees one only while a read or write waits.
//   - writes are queued; a writer goroutine exists only while the queue is
//     non-empty and writes everything queued with one writev.
//   - heartbeats and idle deadlines come from one timer wheel per Engine,
//     not a ticker per connection.
//
// Concurrency contract: Handler.Message is called from at most one goroutine
// at a time per connection, in frame order; it may block (that is how a
// protocol pauses reading: TCP then pushes back on the peer). Send, Close,
// StopReading and the accessors are safe from any goroutine. Every exit goes
// through Close, which runs once: queued frames are written, then the
// handler's farewell frame, then the close frame, then the socket is closed
// and Handler.Closed is called after the reader has stopped.
package wsconn
