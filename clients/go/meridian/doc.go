// Package meridian is the Go device client of Meridian's device protocol v1
// (docs/protocol.md): one implementation of the device side, for gateways
// and services written in Go, and the one that `meridian sim` is built on.
//
// Client is the whole device: New(Config) with the server URL and the
// device token, Run(ctx) in a goroutine to keep it connected, and Send to
// queue readings. Client keeps every batch in a bounded ring until the
// server acks it as durable, resends unacked batches after each reconnect
// starting from hello.acked (section 7.2), reconnects with exponential
// backoff and full jitter (7.4; longer after 1013 and HTTP 429), answers
// pings and commands, and can persist its ring to a file so readings
// survive a restart. Close code 1008 and HTTP 401/403 end Run with a
// *RefusedError: the token is wrong or the operator disabled the device,
// and reconnecting will not help until someone acts. Transport HTTP uses
// the HTTP fallback (section 10) instead of a WebSocket. A guide is in
// docs/connect-go.md.
//
// The building blocks under Client are exported for callers that run their
// own event loop, as the simulator does with thousands of devices: Conn is
// one WebSocket connection read with deadlines (one goroutine can read acks
// and write batches), Ring and RingFile the resend buffer and its
// persistence, Backoff the reconnect delays, HTTPDevice the fallback's two
// requests. They carry no policy; Client is where docs/protocol.md's rules
// are applied.
//
// Concurrency: Client.Send and Client.Pending may be called from any
// goroutine; Run is called once and owns the connection. Run uses two
// goroutines per WebSocket connection (one writes batches, one reads acks,
// commands and pings); OnAck and OnCommand run on the reading one. Conn's
// Poll is for one goroutine at a time, its writes for any. Ring, RingFile
// and Backoff are not safe for concurrent use.
package meridian
