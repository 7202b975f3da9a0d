// Package queryapi is the read side of storage over HTTP and in the CLI:
// GET /v1/query (read-only SQL) and GET /v1/series (one metric of one
// device, downsampled for charts), and the table/JSON/CSV writers that
// `meridian query` shares with the API.
//
// It knows nothing of authentication: cmd/meridian mounts the handler behind
// operator auth (viewer role). Handlers are safe for concurrent use; each
// request is bounded by the store's statement timeout and row cap.
package queryapi
