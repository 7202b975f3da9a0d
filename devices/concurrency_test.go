package devices

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// Run with -race: the service is used from every connection's goroutine.
func TestConcurrentUse(t *testing.T) {
	s, _, _, _ := newTestService(DefaultConfig())
	ctx := context.Background()
	_, tok, _ := s.AddDevice(ctx, "shared", "", nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("d-%d-%d", g, i)
				s.AllowConnect(id)
				s.AllowReadings(id, 10)
				if _, err := s.AuthenticateDevice(ctx, tok); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := s.AddDevice(ctx, id, "", nil); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					s.OnKick(func(string, string) {})
					if err := s.SetEnabled(ctx, id, false); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}
