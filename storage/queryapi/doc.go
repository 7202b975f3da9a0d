// Package queryapi is the read side of storage over HTTP and in the CLI:
// GET /v1/query (read-only SQL) and GET /v1/series (one metric of one
// device, downsampled for charts), and the table/JSON/CSV writers that
// `meridian query` shares with the API.
//
// It knows nothing of authentication: cmd/meridian mounts the handler behind
// operator auth (viewer role). Handlers are safe for concurrent use. Each
// /v1/query request is bounded by one deadline covering the statement and
// the response, a row cap and a byte cap; at most Config.MaxConcurrent run at
// once, and more are answered 429 rather than queued. What the SQL may read
// is the store's business (query role on PostgreSQL, authorizer on SQLite).
package queryapi
