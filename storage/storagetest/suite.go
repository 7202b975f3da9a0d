package storagetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/storage"
)

// NewStore returns a fresh, migrated, empty backend using ret as its
// retention, and registers its own cleanup with t.
type NewStore func(t *testing.T, ret storage.Retention) Backend

// Run runs the conformance suite against the backend newStore makes. Each
// subtest gets its own store.
func Run(t *testing.T, newStore func(t *testing.T, ret storage.Retention) Backend) {
	cases := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore)
	}{
		{"Ping", testPing},
		{"RoundTrip", testRoundTrip},
		{"WatermarkAndDuplicate", testWatermarkDuplicate},
		{"SeveralBatchesOneDevice", testSeveralBatches},
		{"FailedCommitStoresNothing", testAtomicity},
		{"ConcurrentResend", testConcurrentResend},
		{"NameRegistrationConcurrent", testNameRegistration},
		{"Retention", testRetention},
		{"Rollups", testRollups},
		{"RollupsRealtime", testRollupsRealtime},
		{"Series", testSeries},
		{"QueryReadOnly", testQueryReadOnly},
		{"QueryMaxRows", testQueryMaxRows},
		{"Devices", testDevices},
		{"DeleteDevice", testDeleteDevice},
		{"Tokens", testTokens},
		{"APIKeys", testAPIKeys},
		{"Sessions", testSessions},
		{"SessionGroups", testSessionGroups},
		{"DocsSQL", testDocsSQL},
		{"TimescaleCompressedLateInsert", testTimescaleCompressed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newStore) })
	}
}

func testPing(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	if err := b.Ping(ctxFor(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	switch m := b.Mode(); m {
	case storage.ModePostgres, storage.ModeTimescale, storage.ModeSQLite:
	default:
		t.Fatalf("Mode() = %q, want one of the storage.Mode* constants", m)
	}
}

func testRoundTrip(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-3 * time.Hour)
	in := []telemetry.Reading{
		{Time: ms(base), Metric: "temp", Value: 21.5},
		{Time: ms(base.Add(1 * time.Millisecond)), Metric: "temp", Value: -3.25},
		{Time: ms(base.Add(2 * time.Second)), Metric: "humidity", Value: 0},
		{Time: ms(base.Add(3 * time.Second)), Metric: "power/w", Value: 1e300},
		{Time: ms(base.Add(4 * time.Second)), Metric: "door.open", Value: 1},
	}
	out := mustCommit(t, b, telemetry.Batch{Device: "rt-1", Seq: 1, Readings: in})
	if out[0].Duplicate {
		t.Fatal("first batch reported as duplicate")
	}
	if wm := mustWatermark(t, b, "rt-1"); wm != 1 {
		t.Fatalf("watermark = %d, want 1", wm)
	}
	res := mustQuery(t, b, "SELECT time, device, metric, value FROM telemetry WHERE device = 'rt-1' ORDER BY time")
	if want := []string{"time", "device", "metric", "value"}; !slices.Equal(res.Columns, want) {
		t.Fatalf("columns = %v, want %v", res.Columns, want)
	}
	if len(res.Rows) != len(in) {
		t.Fatalf("got %d rows, want %d: %v", len(res.Rows), len(in), res.Rows)
	}
	for i, row := range res.Rows {
		tm, err := asTime(row[0])
		if err != nil {
			t.Fatalf("row %d time: %v", i, err)
		}
		dev, _ := asString(row[1])
		metric, _ := asString(row[2])
		val, err := asFloat(row[3])
		if err != nil {
			t.Fatalf("row %d value: %v", i, err)
		}
		want := in[i]
		if tm.UnixMilli() != want.Time || dev != "rt-1" || metric != want.Metric || val != want.Value {
			t.Errorf("row %d = (%v %q %q %v), want (%v rt-1 %q %v)", i, tm, dev, metric, val,
				time.UnixMilli(want.Time).UTC(), want.Metric, want.Value)
		}
	}
	// Unknown devices have watermark 0.
	if wm := mustWatermark(t, b, "never-seen"); wm != 0 {
		t.Fatalf("watermark of unknown device = %d, want 0", wm)
	}
	// The committing device was created in the registry.
	d, err := b.GetDevice(ctxFor(t), "rt-1")
	if err != nil {
		t.Fatalf("GetDevice after Commit: %v", err)
	}
	if !d.Enabled || d.Acked != 1 {
		t.Fatalf("device after Commit = %+v, want enabled with Acked 1", d)
	}
}

func testWatermarkDuplicate(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-2 * time.Hour)
	r := func(n int, v float64) []telemetry.Reading {
		return readingsAt("m", base.Add(time.Duration(n)*time.Minute), time.Second, 3, func(int) float64 { return v })
	}
	steps := []struct {
		seq       uint64
		readings  []telemetry.Reading
		duplicate bool
		rows      int64
		wm        uint64
	}{
		{seq: 5, readings: r(0, 1), rows: 3, wm: 5},
		{seq: 5, readings: r(1, 2), duplicate: true, rows: 3, wm: 5}, // resend with other content: still a duplicate
		{seq: 3, readings: r(2, 3), duplicate: true, rows: 3, wm: 5},
		{seq: 6, readings: nil, rows: 3, wm: 6}, // empty batch moves the watermark
		{seq: 6, readings: r(3, 4), duplicate: true, rows: 3, wm: 6},
		{seq: 9, readings: r(4, 5), rows: 6, wm: 9},
	}
	for i, s := range steps {
		out := mustCommit(t, b, telemetry.Batch{Device: "wm-1", Seq: s.seq, Readings: s.readings})
		if out[0].Duplicate != s.duplicate {
			t.Fatalf("step %d (seq %d): Duplicate = %v, want %v", i, s.seq, out[0].Duplicate, s.duplicate)
		}
		if n := countRows(t, b, "wm-1"); n != s.rows {
			t.Fatalf("step %d (seq %d): %d rows stored, want %d", i, s.seq, n, s.rows)
		}
		if wm := mustWatermark(t, b, "wm-1"); wm != s.wm {
			t.Fatalf("step %d (seq %d): watermark %d, want %d", i, s.seq, wm, s.wm)
		}
	}
	// Values of the duplicate resends must not have leaked in.
	if n := scalarInt(t, b, "SELECT count(*) FROM telemetry WHERE device = 'wm-1' AND value IN (2, 3, 4)"); n != 0 {
		t.Fatalf("%d rows of duplicate batches stored", n)
	}
}

func testSeveralBatches(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-2 * time.Hour)
	mk := func(dev string, seq uint64) telemetry.Batch {
		return telemetry.Batch{Device: dev, Seq: seq, Readings: readingsAt("m", base.Add(time.Duration(seq)*time.Minute), time.Second, 2, func(i int) float64 { return float64(seq) })}
	}
	out := mustCommit(t, b, mk("sb-1", 1), mk("sb-2", 1), mk("sb-1", 2), mk("sb-1", 3), mk("sb-2", 2))
	for i, o := range out {
		if o.Duplicate {
			t.Fatalf("batch %d reported duplicate", i)
		}
	}
	if wm := mustWatermark(t, b, "sb-1"); wm != 3 {
		t.Fatalf("sb-1 watermark %d, want 3", wm)
	}
	if wm := mustWatermark(t, b, "sb-2"); wm != 2 {
		t.Fatalf("sb-2 watermark %d, want 2", wm)
	}
	if n := countRows(t, b, "sb-1"); n != 6 {
		t.Fatalf("sb-1 has %d rows, want 6", n)
	}
	// A resend of 3 next to a new 4 in one call: the first is a duplicate,
	// the second is stored; a batch repeated inside one call is a duplicate
	// of its earlier copy.
	out = mustCommit(t, b, mk("sb-1", 3), mk("sb-1", 4), mk("sb-1", 4))
	if got := []bool{out[0].Duplicate, out[1].Duplicate, out[2].Duplicate}; !slices.Equal(got, []bool{true, false, true}) {
		t.Fatalf("Duplicate flags = %v, want [true false true]", got)
	}
	if n := countRows(t, b, "sb-1"); n != 8 {
		t.Fatalf("sb-1 has %d rows, want 8", n)
	}
	if wm := mustWatermark(t, b, "sb-1"); wm != 4 {
		t.Fatalf("sb-1 watermark %d, want 4", wm)
	}
}

// testAtomicity checks that a failing Commit leaves rows and watermark in
// agreement: a cancelled context must fail and store nothing; commits whose
// deadline expires somewhere mid-flight either store everything with the
// watermark, or nothing and no watermark (an error after the database
// committed is allowed — the caller resends and deduplication absorbs it —
// but rows without watermark or watermark without rows are not).
func testAtomicity(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-2 * time.Hour)
	big := func(dev string) []telemetry.Batch {
		var bs []telemetry.Batch
		for s := 1; s <= 4; s++ {
			bs = append(bs, telemetry.Batch{Device: dev, Seq: uint64(s),
				Readings: readingsAt(fmt.Sprintf("m%d", s), base.Add(time.Duration(s)*time.Minute), time.Millisecond, 2500, func(i int) float64 { return float64(i) })})
		}
		bs = append(bs, telemetry.Batch{Device: dev + "-other", Seq: 1,
			Readings: readingsAt("m", base, time.Millisecond, 10, func(i int) float64 { return 1 })})
		return bs
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Commit(ctx, big("at-cancel")); err == nil {
		t.Fatal("Commit with a cancelled context succeeded")
	}
	for _, dev := range []string{"at-cancel", "at-cancel-other"} {
		if wm := mustWatermark(t, b, dev); wm != 0 {
			t.Fatalf("%s: watermark %d after failed commit", dev, wm)
		}
		if n := countRows(t, b, dev); n != 0 {
			t.Fatalf("%s: %d rows after failed commit", dev, n)
		}
	}

	for i, d := range []time.Duration{time.Microsecond, 200 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond, 100 * time.Millisecond} {
		dev := fmt.Sprintf("at-%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		_, err := b.Commit(ctx, big(dev))
		cancel()
		for _, dv := range []string{dev, dev + "-other"} {
			wm := mustWatermark(t, b, dv)
			n := countRows(t, b, dv)
			want := int64(10)
			wantWM := uint64(1)
			if dv == dev {
				want, wantWM = 10000, 4
			}
			switch {
			case wm == 0 && n == 0:
				if err == nil {
					t.Fatalf("%s (timeout %v): Commit returned nil but stored nothing", dv, d)
				}
			case wm == wantWM && n == want:
			default:
				t.Fatalf("%s (timeout %v, err %v): watermark %d with %d rows: partial commit", dv, d, err, wm, n)
			}
		}
		// Whatever happened, a resend now completes the set exactly once.
		mustCommit(t, b, big(dev)...)
		if n := countRows(t, b, dev); n != 10000 {
			t.Fatalf("%s after resend: %d rows, want 10000", dev, n)
		}
	}
}

func testConcurrentResend(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-2 * time.Hour)
	const rounds = 20
	for seq := uint64(1); seq <= rounds; seq++ {
		batch := telemetry.Batch{Device: "cr-1", Seq: seq,
			Readings: readingsAt("m", base.Add(time.Duration(seq)*time.Minute), time.Second, 3, func(i int) float64 { return float64(i) })}
		var wg sync.WaitGroup
		outs := make([][]telemetry.Outcome, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				outs[w], errs[w] = b.Commit(context.Background(), []telemetry.Batch{batch})
			}()
		}
		close(start)
		wg.Wait()
		stored := 0
		for w := range 2 {
			if errs[w] != nil {
				t.Fatalf("seq %d writer %d: %v", seq, w, errs[w])
			}
			if !outs[w][0].Duplicate {
				stored++
			}
		}
		if stored != 1 {
			t.Fatalf("seq %d: %d writers stored the batch, want exactly 1", seq, stored)
		}
	}
	if n := countRows(t, b, "cr-1"); n != 3*rounds {
		t.Fatalf("%d rows, want %d", n, 3*rounds)
	}
	if wm := mustWatermark(t, b, "cr-1"); wm != rounds {
		t.Fatalf("watermark %d, want %d", wm, rounds)
	}
}

func testNameRegistration(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	base := baseTime().Add(-2 * time.Hour)
	const writers, commits, shared = 8, 5, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*commits)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range commits {
				var rs []telemetry.Reading
				at := base.Add(time.Duration(k) * time.Minute)
				for m := range shared {
					rs = append(rs, telemetry.Reading{Time: ms(at.Add(time.Duration(m) * time.Millisecond)), Metric: fmt.Sprintf("shared.m%d", m), Value: float64(m)})
				}
				rs = append(rs, telemetry.Reading{Time: ms(at), Metric: fmt.Sprintf("own.g%d.k%d", g, k), Value: 1})
				// Two devices per writer, one shared by all writers'
				// batches, so device registration races too.
				batches := []telemetry.Batch{
					{Device: fmt.Sprintf("nr-%d", g), Seq: uint64(k + 1), Readings: rs},
					{Device: fmt.Sprintf("nr-shared-%d", k), Seq: uint64(g + 1), Readings: rs[:1]},
				}
				if _, err := b.Commit(context.Background(), batches); err != nil {
					errs <- fmt.Errorf("writer %d commit %d: %w", g, k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM metrics WHERE metric LIKE 'shared.%'"); n != shared {
		t.Fatalf("%d shared metric names registered, want %d", n, shared)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM metrics WHERE metric LIKE 'own.%'"); n != writers*commits {
		t.Fatalf("%d own metric names registered, want %d", n, writers*commits)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM (SELECT metric FROM metrics GROUP BY metric HAVING count(*) > 1) d"); n != 0 {
		t.Fatalf("%d metric names registered twice", n)
	}
	if n := scalarInt(t, b, "SELECT count(DISTINCT metric) FROM telemetry"); n != shared+writers*commits {
		t.Fatalf("%d distinct metrics in telemetry, want %d", n, shared+writers*commits)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM telemetry WHERE device LIKE 'nr-%' AND device NOT LIKE 'nr-shared-%'"); n != writers*commits*(shared+1) {
		t.Fatalf("%d rows stored, want %d", n, writers*commits*(shared+1))
	}
	for k := range commits {
		// Seqs of the shared devices arrive in any order, so lower ones may
		// be duplicates; the highest is never one.
		if wm := mustWatermark(t, b, fmt.Sprintf("nr-shared-%d", k)); wm != writers {
			t.Fatalf("nr-shared-%d watermark %d, want %d", k, wm, writers)
		}
	}
}

func testRetention(t *testing.T, newStore NewStore) {
	ret := storage.Retention{Raw: 48 * time.Hour, Rollups: 30 * 24 * time.Hour}
	b := newStore(t, ret)
	now := baseTime()
	at := map[string]time.Time{
		"60d": now.Add(-60 * 24 * time.Hour),
		"10d": now.Add(-10 * 24 * time.Hour),
		"1h":  now.Add(-1 * time.Hour),
	}
	seq := uint64(0)
	for _, k := range []string{"60d", "10d", "1h"} {
		seq++
		mustCommit(t, b, telemetry.Batch{Device: "ret-1", Seq: seq,
			Readings: readingsAt("m-"+k, at[k], time.Second, 5, func(i int) float64 { return float64(i) })})
	}
	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	// Backends may drop raw data in whole partitions or chunks of up to a
	// day, so only data clearly past the cutoff must be gone.
	raw := func(k string) int64 {
		return scalarInt(t, b, fmt.Sprintf("SELECT count(*) FROM telemetry WHERE device = 'ret-1' AND metric = 'm-%s'", k))
	}
	rollup := func(k string) int64 {
		return scalarInt(t, b, fmt.Sprintf("SELECT count(*) FROM telemetry_1m WHERE device = 'ret-1' AND metric = 'm-%s'", k))
	}
	if n := raw("60d"); n != 0 {
		t.Errorf("raw rows 60 days old: %d, want 0 (Retention.Raw 48h)", n)
	}
	if n := raw("10d"); n != 0 {
		t.Errorf("raw rows 10 days old: %d, want 0 (Retention.Raw 48h)", n)
	}
	if n := raw("1h"); n != 5 {
		t.Errorf("raw rows 1 hour old: %d, want 5", n)
	}
	if n := rollup("60d"); n != 0 {
		t.Errorf("1m rollup rows 60 days old: %d, want 0 (Retention.Rollups 30d)", n)
	}
	if n := rollup("10d"); n != 1 {
		t.Errorf("1m rollup rows 10 days old: %d, want 1 (rollups outlive raw data)", n)
	}
	if n := rollup("1h"); n != 1 {
		t.Errorf("1m rollup rows 1 hour old: %d, want 1", n)
	}
	// Much later everything has expired. The watermark survives retention.
	if err := b.Maintain(ctxFor(t), now.Add(365*24*time.Hour)); err != nil {
		t.Fatalf("Maintain a year later: %v", err)
	}
	if n := countRows(t, b, "ret-1"); n != 0 {
		t.Errorf("a year later %d raw rows remain", n)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM telemetry_1m WHERE device = 'ret-1'"); n != 0 {
		t.Errorf("a year later %d 1m rollup rows remain", n)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM telemetry_1h WHERE device = 'ret-1'"); n != 0 {
		t.Errorf("a year later %d 1h rollup rows remain", n)
	}
	if wm := mustWatermark(t, b, "ret-1"); wm != seq {
		t.Errorf("watermark after retention %d, want %d", wm, seq)
	}
}

type bucketStat struct {
	min, max, sum, last float64
	lastTime            int64
	count               int64
}

func expectBuckets(rs []telemetry.Reading, width time.Duration) map[int64]*bucketStat {
	out := map[int64]*bucketStat{}
	for _, r := range rs {
		k := r.Time - r.Time%width.Milliseconds()
		s := out[k]
		if s == nil {
			s = &bucketStat{min: math.Inf(1), max: math.Inf(-1), lastTime: math.MinInt64}
			out[k] = s
		}
		s.min = math.Min(s.min, r.Value)
		s.max = math.Max(s.max, r.Value)
		s.sum += r.Value
		s.count++
		if r.Time >= s.lastTime {
			s.last, s.lastTime = r.Value, r.Time
		}
	}
	return out
}

func checkRollup(t *testing.T, b Backend, view string, rs []telemetry.Reading, width time.Duration) {
	t.Helper()
	want := expectBuckets(rs, width)
	res := mustQuery(t, b, fmt.Sprintf(`SELECT bucket, min, max, avg, count, last FROM %s WHERE device = 'roll-1' AND metric = 'temp' ORDER BY bucket`, view))
	if len(res.Rows) != len(want) {
		t.Fatalf("%s: %d buckets, want %d", view, len(res.Rows), len(want))
	}
	for _, row := range res.Rows {
		bt, err := asTime(row[0])
		if err != nil {
			t.Fatalf("%s bucket: %v", view, err)
		}
		w := want[bt.UnixMilli()]
		if w == nil {
			t.Fatalf("%s: unexpected bucket %v", view, bt)
		}
		var got [5]float64
		for i := range got {
			if got[i], err = asFloat(row[i+1]); err != nil {
				t.Fatalf("%s %v column %s: %v", view, bt, res.Columns[i+1], err)
			}
		}
		exp := [5]float64{w.min, w.max, w.sum / float64(w.count), float64(w.count), w.last}
		for i := range got {
			if !near(got[i], exp[i]) {
				t.Errorf("%s bucket %v %s = %v, want %v", view, bt.UTC(), res.Columns[i+1], got[i], exp[i])
			}
		}
	}
}

func testRollups(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	now := baseTime()
	start := now.Add(-3 * time.Hour)
	// Two hours at one reading per 10s, values that make min, max, avg and
	// last differ per bucket.
	rs := readingsAt("temp", start.Add(5*time.Second), 10*time.Second, 720, func(i int) float64 { return float64((i*7919)%101) - 50.5 })
	mustCommit(t, b, telemetry.Batch{Device: "roll-1", Seq: 1, Readings: rs})
	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	checkRollup(t, b, "telemetry_1m", rs, time.Minute)
	checkRollup(t, b, "telemetry_1h", rs, time.Hour)

	// Late data: an older hour nobody has seen, plus readings landing inside
	// buckets already rolled up (a new min, a new max, a new last).
	late := readingsAt("temp", now.Add(-5*time.Hour), 7*time.Second, 30, func(i int) float64 { return float64(i) })
	late = append(late,
		telemetry.Reading{Time: ms(start.Add(1 * time.Second)), Metric: "temp", Value: -1000},
		telemetry.Reading{Time: ms(start.Add(61 * time.Second)), Metric: "temp", Value: 1000},
		telemetry.Reading{Time: ms(start.Add(119 * time.Second)), Metric: "temp", Value: 42},
	)
	mustCommit(t, b, telemetry.Batch{Device: "roll-1", Seq: 2, Readings: late})
	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain after late data: %v", err)
	}
	all := append(slices.Clone(rs), late...)
	checkRollup(t, b, "telemetry_1m", all, time.Minute)
	checkRollup(t, b, "telemetry_1h", all, time.Hour)
}

// testRollupsRealtime: telemetry_1m and telemetry_1h include readings no
// Maintain has rolled up yet — before the first refresh, after the last
// one, and late readings landing in buckets a refresh already materialized
// — and Maintain does not change the answer.
func testRollupsRealtime(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	now := baseTime()
	start := now.Add(-90 * time.Minute)
	rs := readingsAt("temp", start.Add(3*time.Second), 10*time.Second, 360, func(i int) float64 { return float64((i*7919)%101) - 50.5 })
	mustCommit(t, b, telemetry.Batch{Device: "roll-1", Seq: 1, Readings: rs})
	// Never refreshed: everything comes from the raw readings.
	checkRollup(t, b, "telemetry_1m", rs, time.Minute)
	checkRollup(t, b, "telemetry_1h", rs, time.Hour)

	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	checkRollup(t, b, "telemetry_1m", rs, time.Minute)
	checkRollup(t, b, "telemetry_1h", rs, time.Hour)

	// After the refresh: newer readings, and (except on TimescaleDB, whose
	// real-time aggregates show late data only after a refresh) late ones
	// inside materialized buckets — a new min, a new max, a new last.
	all := slices.Clone(rs)
	fresh := readingsAt("temp", now.Add(time.Second), 7*time.Second, 50, func(i int) float64 { return float64(i) })
	mustCommit(t, b, telemetry.Batch{Device: "roll-1", Seq: 2, Readings: fresh})
	all = append(all, fresh...)
	if b.Mode() != storage.ModeTimescale {
		late := []telemetry.Reading{
			{Time: ms(start.Add(1 * time.Second)), Metric: "temp", Value: -1000},
			{Time: ms(start.Add(61 * time.Second)), Metric: "temp", Value: 1000},
			{Time: ms(start.Add(119 * time.Second)), Metric: "temp", Value: 42},
		}
		mustCommit(t, b, telemetry.Batch{Device: "roll-1", Seq: 3, Readings: late})
		all = append(all, late...)
	}
	checkRollup(t, b, "telemetry_1m", all, time.Minute)
	checkRollup(t, b, "telemetry_1h", all, time.Hour)

	if err := b.Maintain(ctxFor(t), now.Add(20*time.Minute)); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	checkRollup(t, b, "telemetry_1m", all, time.Minute)
	checkRollup(t, b, "telemetry_1h", all, time.Hour)
}

func testSeries(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	now := baseTime()
	from := now.Add(-2 * time.Hour)
	rs := readingsAt("m", from, time.Second, 600, func(i int) float64 {
		switch i {
		case 333:
			return 1000
		case 444:
			return -1000
		}
		return math.Sin(float64(i) / 30)
	})
	mustCommit(t, b, telemetry.Batch{Device: "ser-1", Seq: 1, Readings: rs})
	if err := b.Maintain(ctxFor(t), now); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	ctx := ctxFor(t)
	req := storage.SeriesRequest{Device: "ser-1", Metric: "m", From: from, To: from.Add(10 * time.Minute), Points: 1000}

	s, err := b.Series(ctx, req)
	if err != nil {
		t.Fatalf("Series raw: %v", err)
	}
	if s.Source != "raw" || s.Bucket != 0 || len(s.Points) != len(rs) {
		t.Fatalf("Series with room for every point: source %q bucket %v, %d points; want raw, 0, %d", s.Source, s.Bucket, len(s.Points), len(rs))
	}
	for i, p := range s.Points {
		r := rs[i]
		if p.Time.UnixMilli() != r.Time || p.Min != r.Value || p.Max != r.Value || p.Avg != r.Value || p.Last != r.Value || p.Count != 1 {
			t.Fatalf("raw point %d = %+v, want time %v value %v count 1", i, p, time.UnixMilli(r.Time).UTC(), r.Value)
		}
	}

	for _, c := range []struct {
		name   string
		to     time.Time
		points int
	}{
		{"10min/5", from.Add(10 * time.Minute), 5},
		{"2days/10", from.Add(48 * time.Hour), 10},
		{"1h/7", from.Add(time.Hour), 7},
	} {
		req := req
		req.To, req.Points = c.to, c.points
		s, err := b.Series(ctx, req)
		if err != nil {
			t.Fatalf("%s: Series: %v", c.name, err)
		}
		if s.Source == "raw" || s.Bucket <= 0 {
			t.Fatalf("%s: source %q bucket %v, want a rollup", c.name, s.Source, s.Bucket)
		}
		if len(s.Points) == 0 || len(s.Points) > c.points {
			t.Fatalf("%s: %d points, want 1..%d", c.name, len(s.Points), c.points)
		}
		checkDownsampled(t, c.name, req, s, rs)
	}

	// Unknown names give an empty series, not an error.
	for _, r := range []storage.SeriesRequest{
		{Device: "ser-1", Metric: "nope", From: req.From, To: req.To, Points: 10},
		{Device: "nope", Metric: "m", From: req.From, To: req.To, Points: 10},
	} {
		s, err := b.Series(ctx, r)
		if err != nil {
			t.Fatalf("Series(%s/%s): %v", r.Device, r.Metric, err)
		}
		if len(s.Points) != 0 {
			t.Fatalf("Series(%s/%s): %d points, want 0", r.Device, r.Metric, len(s.Points))
		}
	}
}

// checkDownsampled checks a rollup-sourced series against the raw readings
// it summarises: points ascending inside the requested window, each point
// consistent (min <= avg <= max, last within), counts adding up to every
// reading, the spikes kept and the last value the last reading's.
func checkDownsampled(t *testing.T, name string, req storage.SeriesRequest, s storage.Series, rs []telemetry.Reading) {
	t.Helper()
	var count int64
	hi, lo := math.Inf(-1), math.Inf(1)
	for i, p := range s.Points {
		if i > 0 && !p.Time.After(s.Points[i-1].Time) {
			t.Fatalf("%s: points not ascending at %d", name, i)
		}
		if !p.Time.Before(req.To) || p.Time.Before(req.From.Add(-s.Bucket)) {
			t.Fatalf("%s: point time %v outside [%v, %v)", name, p.Time, req.From, req.To)
		}
		if p.Min > p.Avg+1e-9 || p.Avg > p.Max+1e-9 || p.Last < p.Min || p.Last > p.Max {
			t.Fatalf("%s: inconsistent point %+v", name, p)
		}
		count += p.Count
		hi, lo = math.Max(hi, p.Max), math.Min(lo, p.Min)
	}
	if count != int64(len(rs)) {
		t.Errorf("%s: counts sum to %d, want %d", name, count, len(rs))
	}
	if hi != 1000 || lo != -1000 {
		t.Errorf("%s: spikes lost in downsampling: max %v min %v, want 1000 and -1000", name, hi, lo)
	}
	if last := s.Points[len(s.Points)-1].Last; !near(last, rs[len(rs)-1].Value) {
		t.Errorf("%s: last value %v, want %v", name, last, rs[len(rs)-1].Value)
	}
}

func seedSmall(t *testing.T, b Backend, n int) {
	t.Helper()
	base := baseTime().Add(-time.Hour)
	mustCommit(t, b, telemetry.Batch{Device: "q-1", Seq: 1,
		Readings: readingsAt("m", base, time.Second, n, func(i int) float64 { return float64(i) })})
}

func testQueryReadOnly(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	seedSmall(t, b, 10)
	ctx := ctxFor(t)
	for _, sql := range []string{
		"INSERT INTO metrics (metric) VALUES ('injected')",
		"DELETE FROM telemetry",
		"DELETE FROM devices",
		"UPDATE devices SET enabled = false",
		"DROP VIEW telemetry",
		"CREATE TABLE evil (x int)",
	} {
		_, err := b.Query(ctx, sql, storage.QueryOptions{})
		if err == nil {
			t.Errorf("Query(%q) succeeded, want an error", sql)
			continue
		}
		// Statements the backend refuses before running them may report
		// another error (e.g. a view is not deletable); writes that reach
		// the database must be reported as ErrReadOnly.
		if sql == "DELETE FROM devices" && !errors.Is(err, storage.ErrReadOnly) {
			t.Errorf("Query(%q): error %v does not wrap storage.ErrReadOnly", sql, err)
		}
	}
	if n := countRows(t, b, "q-1"); n != 10 {
		t.Fatalf("after refused writes %d rows, want 10", n)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM devices"); n != 1 {
		t.Fatalf("after refused writes %d devices, want 1", n)
	}
	if _, err := b.Query(ctx, "SELEC nonsense", storage.QueryOptions{}); err == nil {
		t.Fatal("Query of a syntax error succeeded")
	}
}

func testQueryMaxRows(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	seedSmall(t, b, 50)
	ctx := ctxFor(t)
	for _, c := range []struct {
		max       int
		rows      int
		truncated bool
	}{
		{max: 10, rows: 10, truncated: true},
		{max: 50, rows: 50, truncated: false},
		{max: 100, rows: 50, truncated: false},
		{max: 0, rows: 50, truncated: false}, // default cap is 10,000
	} {
		res, err := b.Query(ctx, "SELECT time, value FROM telemetry ORDER BY time", storage.QueryOptions{MaxRows: c.max})
		if err != nil {
			t.Fatalf("MaxRows %d: %v", c.max, err)
		}
		if len(res.Rows) != c.rows || res.Truncated != c.truncated {
			t.Errorf("MaxRows %d: %d rows truncated=%v, want %d rows truncated=%v", c.max, len(res.Rows), res.Truncated, c.rows, c.truncated)
		}
		if len(res.Rows) > 0 {
			if v, err := asFloat(res.Rows[0][1]); err != nil || v != 0 {
				t.Errorf("MaxRows %d: first value %v (%v), want 0", c.max, res.Rows[0][1], err)
			}
		}
	}
	// Types: counts are integers, values floats, NULL is nil, text is string.
	res := mustQuery(t, b, "SELECT count(*) AS n, max(value) AS hi, NULL AS empty_value, 'x' AS s FROM telemetry")
	if want := []string{"n", "hi", "empty_value", "s"}; !slices.Equal(res.Columns, want) {
		t.Fatalf("columns %v, want %v", res.Columns, want)
	}
	row := res.Rows[0]
	if _, ok := row[0].(int64); !ok {
		t.Errorf("count(*) is %T, want int64", row[0])
	}
	if v, ok := row[1].(float64); !ok || v != 49 {
		t.Errorf("max(value) is %v (%T), want float64 49", row[1], row[1])
	}
	if row[2] != nil {
		t.Errorf("NULL is %v (%T), want nil", row[2], row[2])
	}
	if v, ok := row[3].(string); !ok || v != "x" {
		t.Errorf("'x' is %v (%T), want string", row[3], row[3])
	}
}

func testDevices(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	created := time.Now().UTC().Truncate(time.Second)
	a := storage.Device{ID: "dev-a", Name: "Boiler A", Labels: map[string]string{"site": "north", "floor": "2"}, Enabled: true, CreatedAt: created}
	bb := storage.Device{ID: "dev-b", Name: "", Labels: nil, Enabled: false, CreatedAt: created}
	for _, d := range []storage.Device{bb, a} {
		if err := b.CreateDevice(ctx, d); err != nil {
			t.Fatalf("CreateDevice(%s): %v", d.ID, err)
		}
	}
	if err := b.CreateDevice(ctx, a); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("CreateDevice twice: %v, want ErrExists", err)
	}
	got, err := b.GetDevice(ctx, "dev-a")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if got.ID != a.ID || got.Name != a.Name || !got.Enabled || !got.CreatedAt.Equal(created) || got.LastSeen != nil || got.Acked != 0 ||
		len(got.Labels) != 2 || got.Labels["site"] != "north" || got.Labels["floor"] != "2" {
		t.Fatalf("GetDevice = %+v, want %+v", got, a)
	}
	if _, err := b.GetDevice(ctx, "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetDevice(unknown): %v, want ErrNotFound", err)
	}
	list, err := b.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if len(list) != 2 || list[0].ID != "dev-a" || list[1].ID != "dev-b" || list[1].Enabled {
		t.Fatalf("ListDevices = %+v, want dev-a, dev-b (disabled) ordered by id", list)
	}
	if err := b.SetDeviceEnabled(ctx, "dev-b", true); err != nil {
		t.Fatalf("SetDeviceEnabled: %v", err)
	}
	if err := b.SetDeviceEnabled(ctx, "nope", true); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("SetDeviceEnabled(unknown): %v, want ErrNotFound", err)
	}
	seen := created.Add(time.Minute)
	if err := b.TouchDevice(ctx, "dev-b", seen); err != nil {
		t.Fatalf("TouchDevice: %v", err)
	}
	if err := b.TouchDevice(ctx, "nope", seen); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("TouchDevice(unknown): %v, want ErrNotFound", err)
	}
	got, err = b.GetDevice(ctx, "dev-b")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if !got.Enabled || got.LastSeen == nil || !got.LastSeen.Equal(seen) {
		t.Fatalf("after enable+touch: %+v", got)
	}
	// Commit moves Acked of a registered device and keeps its record.
	mustCommit(t, b, telemetry.Batch{Device: "dev-b", Seq: 7})
	got, _ = b.GetDevice(ctx, "dev-b")
	if got.Acked != 7 || got.CreatedAt.IsZero() || !got.Enabled {
		t.Fatalf("after Commit: %+v, want Acked 7", got)
	}
	// The public devices table names devices the way telemetry does.
	if n := scalarInt(t, b, "SELECT count(*) FROM devices WHERE device IN ('dev-a', 'dev-b')"); n != 2 {
		t.Fatalf("devices table has %d of dev-a/dev-b", n)
	}
}

func testDeleteDevice(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	base := baseTime().Add(-time.Hour)
	for _, id := range []string{"del-keep", "del-purge"} {
		if err := b.CreateDevice(ctx, storage.Device{ID: id, Enabled: true, CreatedAt: time.Now()}); err != nil {
			t.Fatalf("CreateDevice: %v", err)
		}
		if err := b.AddDeviceToken(ctx, storage.DeviceToken{Hash: []byte("hash-" + id), DeviceID: id, CreatedAt: time.Now()}); err != nil {
			t.Fatalf("AddDeviceToken: %v", err)
		}
		if err := b.OpenSession(ctx, storage.Session{ID: "s-" + id, DeviceID: id, Node: "n1", Transport: "ws", StartedAt: time.Now()}); err != nil {
			t.Fatalf("OpenSession: %v", err)
		}
		mustCommit(t, b, telemetry.Batch{Device: id, Seq: 1, Readings: readingsAt("m", base, time.Second, 4, func(i int) float64 { return 1 })})
	}
	if err := b.DeleteDevice(ctx, "del-keep", false); err != nil {
		t.Fatalf("DeleteDevice(keep): %v", err)
	}
	if err := b.DeleteDevice(ctx, "del-purge", true); err != nil {
		t.Fatalf("DeleteDevice(purge): %v", err)
	}
	if err := b.DeleteDevice(ctx, "nope", false); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("DeleteDevice(unknown): %v, want ErrNotFound", err)
	}
	for _, id := range []string{"del-keep", "del-purge"} {
		if _, err := b.GetDevice(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("GetDevice(%s) after delete: %v, want ErrNotFound", id, err)
		}
		if _, err := b.LookupDeviceToken(ctx, []byte("hash-"+id)); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("token of %s after delete: %v, want ErrNotFound", id, err)
		}
		ss, err := b.ListSessions(ctx, id, 10)
		if err != nil || len(ss) != 0 {
			t.Errorf("sessions of %s after delete: %v %v, want none", id, ss, err)
		}
	}
	if n := countRows(t, b, "del-keep"); n != 4 {
		t.Errorf("readings of deleted device (no purge): %d, want 4 still queryable", n)
	}
	if n := countRows(t, b, "del-purge"); n != 0 {
		t.Errorf("readings of purged device: %d, want 0", n)
	}
	// The id can be provisioned again.
	if err := b.CreateDevice(ctx, storage.Device{ID: "del-keep", Enabled: true, CreatedAt: time.Now()}); err != nil {
		t.Fatalf("CreateDevice after delete: %v", err)
	}
}

func testTokens(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	now := time.Now().UTC().Truncate(time.Second)
	for _, id := range []string{"tok-1", "tok-2"} {
		if err := b.CreateDevice(ctx, storage.Device{ID: id, Enabled: true, CreatedAt: now}); err != nil {
			t.Fatalf("CreateDevice: %v", err)
		}
	}
	add := func(hash, dev string) {
		t.Helper()
		if err := b.AddDeviceToken(ctx, storage.DeviceToken{Hash: []byte(hash), DeviceID: dev, CreatedAt: now}); err != nil {
			t.Fatalf("AddDeviceToken(%s): %v", hash, err)
		}
	}
	add("h1", "tok-1")
	add("h2", "tok-1")
	add("h3", "tok-2")
	if err := b.AddDeviceToken(ctx, storage.DeviceToken{Hash: []byte("h1"), DeviceID: "tok-2", CreatedAt: now}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("AddDeviceToken duplicate hash: %v, want ErrExists", err)
	}
	if err := b.AddDeviceToken(ctx, storage.DeviceToken{Hash: []byte("hx"), DeviceID: "nope", CreatedAt: now}); err == nil {
		t.Fatal("AddDeviceToken for an unknown device succeeded")
	}
	expiry := func(hash string) *time.Time {
		t.Helper()
		tok, err := b.LookupDeviceToken(ctx, []byte(hash))
		if err != nil {
			t.Fatalf("LookupDeviceToken(%s): %v", hash, err)
		}
		if string(tok.Hash) != hash || tok.DeviceID == "" || !tok.CreatedAt.Equal(now) {
			t.Fatalf("LookupDeviceToken(%s) = %+v", hash, tok)
		}
		return tok.ExpiresAt
	}
	if e := expiry("h1"); e != nil {
		t.Fatalf("fresh token expires at %v", e)
	}
	if _, err := b.LookupDeviceToken(ctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LookupDeviceToken(unknown): %v, want ErrNotFound", err)
	}
	// The lookup carries the device's enabled flag (one query per
	// uncached handshake).
	enabled := func(want bool) {
		t.Helper()
		if tok, err := b.LookupDeviceToken(ctx, []byte("h3")); err != nil || tok.DeviceEnabled != want {
			t.Fatalf("LookupDeviceToken(h3).DeviceEnabled = %v, %v; want %v", tok.DeviceEnabled, err, want)
		}
	}
	enabled(true)
	// ... and its watermark, as Commit left it.
	if _, err := b.Commit(ctx, []telemetry.Batch{{Device: "tok-2", Seq: 7, Readings: []telemetry.Reading{{Time: ms(now), Metric: "m", Value: 1}}}}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if tok, err := b.LookupDeviceToken(ctx, []byte("h3")); err != nil || tok.DeviceAcked != 7 {
		t.Fatalf("LookupDeviceToken(h3).DeviceAcked = %d, %v; want 7", tok.DeviceAcked, err)
	}
	if err := b.SetDeviceEnabled(ctx, "tok-2", false); err != nil {
		t.Fatalf("SetDeviceEnabled: %v", err)
	}
	enabled(false)
	if err := b.SetDeviceEnabled(ctx, "tok-2", true); err != nil {
		t.Fatalf("SetDeviceEnabled: %v", err)
	}
	enabled(true)
	// Rotation: keep h2, h1 gets a grace expiry.
	grace := now.Add(time.Hour)
	if err := b.ExpireDeviceTokens(ctx, "tok-1", []byte("h2"), grace); err != nil {
		t.Fatalf("ExpireDeviceTokens: %v", err)
	}
	if e := expiry("h1"); e == nil || !e.Equal(grace) {
		t.Fatalf("h1 expiry %v, want %v", e, grace)
	}
	if e := expiry("h2"); e != nil {
		t.Fatalf("kept token h2 expiry %v, want none", e)
	}
	if e := expiry("h3"); e != nil {
		t.Fatalf("other device's token h3 expiry %v, want none", e)
	}
	// A later expiry never extends an earlier one.
	if err := b.ExpireDeviceTokens(ctx, "tok-1", nil, grace.Add(time.Hour)); err != nil {
		t.Fatalf("ExpireDeviceTokens: %v", err)
	}
	if e := expiry("h1"); !e.Equal(grace) {
		t.Fatalf("h1 expiry moved to %v, want it kept at %v", e, grace)
	}
	if e := expiry("h2"); e == nil || !e.Equal(grace.Add(time.Hour)) {
		t.Fatalf("h2 expiry %v, want %v", e, grace.Add(time.Hour))
	}
	// Revocation now shortens both.
	if err := b.ExpireDeviceTokens(ctx, "tok-1", nil, now); err != nil {
		t.Fatalf("ExpireDeviceTokens: %v", err)
	}
	if e1, e2 := expiry("h1"), expiry("h2"); !e1.Equal(now) || !e2.Equal(now) {
		t.Fatalf("after revoke: h1 %v h2 %v, want %v", e1, e2, now)
	}
	// A reconnect storm looks tokens up concurrently (the PostgreSQL
	// backend then sends them in shared queries): each caller gets its own
	// token, the same hash twice included, and unknown hashes fail alone.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		hash, dev := []string{"h1", "h2", "h3", "unknown"}[i%4], []string{"tok-1", "tok-1", "tok-2", ""}[i%4]
		wg.Go(func() {
			tok, err := b.LookupDeviceToken(ctx, []byte(hash))
			switch {
			case dev == "" && !errors.Is(err, storage.ErrNotFound):
				errs <- fmt.Errorf("concurrent LookupDeviceToken(%s): %v, want ErrNotFound", hash, err)
			case dev != "" && (err != nil || string(tok.Hash) != hash || tok.DeviceID != dev || !tok.DeviceEnabled):
				errs <- fmt.Errorf("concurrent LookupDeviceToken(%s) = %+v, %v; want device %s", hash, tok, err, dev)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testAPIKeys(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	now := time.Now().UTC().Truncate(time.Second)
	keys := []storage.APIKey{
		{ID: "mk_bbb", Hash: []byte("kh2"), Name: "grafana", Role: "viewer", CreatedAt: now.Add(time.Second)},
		{ID: "mk_aaa", Hash: []byte("kh1"), Name: "ops", Role: "admin", CreatedAt: now},
	}
	for _, k := range keys {
		if err := b.AddAPIKey(ctx, k); err != nil {
			t.Fatalf("AddAPIKey(%s): %v", k.ID, err)
		}
	}
	if err := b.AddAPIKey(ctx, storage.APIKey{ID: "mk_aaa", Hash: []byte("other"), Name: "x", Role: "admin", CreatedAt: now}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("AddAPIKey duplicate id: %v, want ErrExists", err)
	}
	k, err := b.LookupAPIKey(ctx, []byte("kh2"))
	if err != nil {
		t.Fatalf("LookupAPIKey: %v", err)
	}
	if k.ID != "mk_bbb" || k.Name != "grafana" || k.Role != "viewer" || !k.CreatedAt.Equal(now.Add(time.Second)) || k.RevokedAt != nil || string(k.Hash) != "kh2" {
		t.Fatalf("LookupAPIKey = %+v", k)
	}
	if _, err := b.LookupAPIKey(ctx, []byte("nope")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LookupAPIKey(unknown): %v, want ErrNotFound", err)
	}
	if err := b.RevokeAPIKey(ctx, "mk_aaa", now.Add(time.Minute)); err != nil {
		t.Fatalf("RevokeAPIKey: %v", err)
	}
	if err := b.RevokeAPIKey(ctx, "nope", now); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("RevokeAPIKey(unknown): %v, want ErrNotFound", err)
	}
	list, err := b.ListAPIKeys(ctx)
	if err != nil {
		t.Fatalf("ListAPIKeys: %v", err)
	}
	ids := make([]string, len(list))
	for i, k := range list {
		ids[i] = k.ID
	}
	sort.Strings(ids)
	if !slices.Equal(ids, []string{"mk_aaa", "mk_bbb"}) {
		t.Fatalf("ListAPIKeys ids %v", ids)
	}
	for _, k := range list {
		revoked := k.RevokedAt != nil
		if revoked != (k.ID == "mk_aaa") || (revoked && !k.RevokedAt.Equal(now.Add(time.Minute))) {
			t.Fatalf("ListAPIKeys: %s revoked at %v", k.ID, k.RevokedAt)
		}
	}
	// A revoked key is still found (so the caller can say "revoked").
	if k, err := b.LookupAPIKey(ctx, []byte("kh1")); err != nil || k.RevokedAt == nil {
		t.Fatalf("LookupAPIKey(revoked) = %+v, %v", k, err)
	}
}

func testSessions(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	ctx := ctxFor(t)
	now := time.Now().UTC().Truncate(time.Second)
	if err := b.CreateDevice(ctx, storage.Device{ID: "ses-1", Enabled: true, CreatedAt: now}); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	for i := range 3 {
		s := storage.Session{ID: fmt.Sprintf("sess-%d", i), DeviceID: "ses-1", Node: "node-a", RemoteAddr: "10.0.0.1:5000",
			Transport: "ws", StartedAt: now.Add(time.Duration(i) * time.Minute)}
		if err := b.OpenSession(ctx, s); err != nil {
			t.Fatalf("OpenSession: %v", err)
		}
	}
	if err := b.OpenSession(ctx, storage.Session{ID: "sess-0", DeviceID: "ses-1", Transport: "ws", StartedAt: now}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("OpenSession duplicate id: %v, want ErrExists", err)
	}
	ended := now.Add(90 * time.Second)
	if err := b.CloseSession(ctx, "sess-1", ended, "takeover", 1234); err != nil {
		t.Fatalf("CloseSession: %v", err)
	}
	if err := b.CloseSession(ctx, "nope", ended, "x", 0); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("CloseSession(unknown): %v, want ErrNotFound", err)
	}
	list, err := b.ListSessions(ctx, "ses-1", 2)
	if err != nil {
		t.Fatalf("ListSessions: %v", err)
	}
	if len(list) != 2 || list[0].ID != "sess-2" || list[1].ID != "sess-1" {
		t.Fatalf("ListSessions(limit 2) = %+v, want sess-2, sess-1 (newest first)", list)
	}
	s := list[1]
	if s.EndedAt == nil || !s.EndedAt.Equal(ended) || s.CloseReason != "takeover" || s.Readings != 1234 ||
		s.Node != "node-a" || s.RemoteAddr != "10.0.0.1:5000" || s.Transport != "ws" || s.DeviceID != "ses-1" || !s.StartedAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("closed session = %+v", s)
	}
	if list[0].EndedAt != nil {
		t.Fatalf("open session has EndedAt %v", list[0].EndedAt)
	}
	if all, err := b.ListSessions(ctx, "ses-1", 100); err != nil || len(all) != 3 {
		t.Fatalf("ListSessions(limit 100) = %d sessions, %v; want 3", len(all), err)
	}
	// Opening and closing sessions advances last_seen (never backwards):
	// the latest start was now+2m, the close at now+90s is older.
	d, err := b.GetDevice(ctx, "ses-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if d.LastSeen == nil || !d.LastSeen.Equal(now.Add(2*time.Minute)) {
		t.Fatalf("last_seen = %v, want %v", d.LastSeen, now.Add(2*time.Minute))
	}
	later := now.Add(5 * time.Minute)
	if err := b.CloseSession(ctx, "sess-2", later, "bye", 1); err != nil {
		t.Fatalf("CloseSession: %v", err)
	}
	if d, err := b.GetDevice(ctx, "ses-1"); err != nil || d.LastSeen == nil || !d.LastSeen.Equal(later) {
		t.Fatalf("last_seen after close = %v, %v; want %v", d.LastSeen, err, later)
	}
}

// testTimescaleCompressed: late readings landing in a compressed chunk are
// stored and reach the rollups. TimescaleDB mode only.
func testTimescaleCompressed(t *testing.T, newStore NewStore) {
	b := newStore(t, storage.Retention{})
	if b.Mode() != storage.ModeTimescale {
		t.Skipf("mode %s: TimescaleDB only", b.Mode())
	}
	old := baseTime().Add(-10 * 24 * time.Hour)
	mustCommit(t, b, telemetry.Batch{Device: "ts-1", Seq: 1, Readings: readingsAt("m", old, time.Second, 30, func(i int) float64 { return float64(i) })})
	// A Maintain a month ahead compresses every chunk older than the
	// configured compress-after (days, by default).
	later := baseTime().Add(30 * 24 * time.Hour)
	if err := b.Maintain(ctxFor(t), later); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	if n := scalarInt(t, b, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'readings' AND is_compressed"); n == 0 {
		t.Fatal("no compressed chunk after Maintain")
	}
	mustCommit(t, b, telemetry.Batch{Device: "ts-1", Seq: 2, Readings: []telemetry.Reading{{Time: ms(old.Add(45 * time.Second)), Metric: "m", Value: 1000}}})
	if n := countRows(t, b, "ts-1"); n != 31 {
		t.Fatalf("%d rows after a late insert into a compressed chunk, want 31", n)
	}
	if err := b.Maintain(ctxFor(t), later); err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	if n := scalarInt(t, b, fmt.Sprintf("SELECT count(*) FROM telemetry_1m WHERE device = 'ts-1' AND max = 1000 AND bucket = '%s'", old.Format(time.RFC3339))); n != 1 {
		t.Fatalf("late reading missing from the 1m rollup of its bucket")
	}
}
