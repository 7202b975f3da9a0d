// Package front is the HTTP front door of `meridian serve`: the one
// http.Server with its deadlines and its cap on connections that have no
// request in progress, TLS with certificate reload, X-Forwarded-For from
// trusted proxies, and /readyz, with the server.* settings that configure
// them (Config: listen address, trusted proxies, TLS, deadlines; its
// Validate names the key). It knows nothing of devices or telemetry;
// cmd/meridian mounts the parts' handlers behind it.
//
// Concurrency: the server's handlers run on net/http's goroutines; the
// connection counter and the certificate are guarded (a mutex, an atomic
// pointer), and CertReloader.Watch is one goroutine owned by the caller.
package front
