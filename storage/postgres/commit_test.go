package postgres

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/meridian-iot/meridian/storage"
)

// flushShapes are flushes as the pipeline forms them: a few batches of 10
// readings at low rates (BenchmarkPipeline's paced load commits ~5-50
// batches per flush), up to 100 batches of 100 at its ceiling.
var flushShapes = []struct{ devices, per int }{
	{1, 10},
	{5, 10},
	{20, 10},
	{100, 10},
	{20, 100},
	{100, 100},
}

// BenchmarkCommitInsertVsCopy commits the same shapes with the readings
// stored by INSERT … unnest and by COPY, alternating the two within each
// op so both see the same machine load, and reports each one's mean commit
// time and their ratio: where COPY's extra round trips stop paying is where
// copyMin belongs.
//
//	go test -run '^$' -bench CommitInsertVsCopy -benchtime 200x -count 3 ./storage/postgres/
func BenchmarkCommitInsertVsCopy(b *testing.B) {
	for _, shape := range flushShapes {
		b.Run(fmt.Sprintf("readings=%d", shape.devices*shape.per), func(b *testing.B) {
			s := openTestStore(b, newTestDB(b), storage.Retention{})
			ctx := context.Background()
			base := time.Now().Add(-time.Minute)
			if _, err := s.Commit(ctx, benchFlush(shape.devices, shape.per, 1, base)); err != nil {
				b.Fatal(err)
			}
			var took [2]time.Duration
			seq := uint64(2)
			for b.Loop() {
				for i, min := range []int{math.MaxInt, 0} {
					f := benchFlush(shape.devices, shape.per, seq, base)
					seq++
					s.copyMin = min
					t0 := time.Now()
					if _, err := s.Commit(ctx, f); err != nil {
						b.Fatal(err)
					}
					took[i] += time.Since(t0)
				}
			}
			n := float64(b.N)
			b.ReportMetric(took[0].Seconds()*1e3/n, "insert-ms")
			b.ReportMetric(took[1].Seconds()*1e3/n, "copy-ms")
			b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "insert/copy")
		})
	}
}
