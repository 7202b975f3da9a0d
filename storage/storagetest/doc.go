// Package storagetest is the conformance suite every storage backend passes,
// so "postgres" and "sqlite" mean the same thing to the rest of Meridian.
//
// A backend's own _test.go calls Run with a factory:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T, ret storage.Retention) storagetest.Backend {
//			return newTestStore(t, ret) // fresh, migrated, empty; closed via t.Cleanup
//		})
//	}
//
// The factory is called once per subtest and must return an empty, migrated
// store configured with the given retention, and register its own cleanup
// (Close, drop the database or temp dir). The suite talks to the store only
// through Backend and through the public SQL surface documented in
// docs/sql.md (telemetry, devices, metrics, telemetry_1m, telemetry_1h); it
// also runs every example query of docs/sql.md (```sql blocks on postgres,
// the ```sqlite block under a heading when there is one on sqlite).
//
// Concurrency: Run's subtests run one after another; several subtests start
// goroutines that call the same store concurrently, which every backend must
// allow. Timescale-only checks are skipped unless Mode() is
// storage.ModeTimescale.
package storagetest
