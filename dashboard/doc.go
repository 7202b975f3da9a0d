// Package dashboard is Meridian's operator UI on the server's own port: the
// login, fleet, device and system pages (server-rendered HTML plus a small
// embedded JavaScript bundle with uPlot charts), the JSON the pages read
// under /ui/api/, and the live feed for browsers: a WebSocket at /v1/live and
// a Server-Sent Events fallback at /v1/live/sse (docs/dashboard.md).
//
// It knows the rest of Meridian only through the small interfaces in Deps
// (an operator authenticator, the device registry, a series reader, a
// command sender, a stats function); cmd/meridian wires them and feeds
// Publish from the ingest pipeline's Committed hook (and the bridge's batches
// from other nodes) and Presence from ingest's session registry.
//
// Concurrency: Publish and Presence never block: they put the item on the
// hub's bounded inbox or drop it (counted). One hub goroutine, started by
// Run, owns the subscription index and every client's coalescing windows, so
// none of that is locked; it hands each client encoded messages through the
// client's bounded queue. Each live connection has one read loop (the
// handler's goroutine) and one write loop, the only writer to its socket.
// Fleet statistics are written by the hub goroutine and read by HTTP
// handlers under a RWMutex; sessions live in a mutex-guarded map. Run also
// starts the metrics sampler, the only writer of the system page's history
// ring (read by handlers under its mutex). A *Dashboard is safe for
// concurrent use.
package dashboard
