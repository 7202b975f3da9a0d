package devices

import (
	"context"
	"time"
)

// bootstrapRetry is how long BootstrapAdminKey waits between attempts while
// the store refuses: long enough not to flood a recovering database's log,
// short enough that operators get in soon after it returns.
const bootstrapRetry = 5 * time.Second

// BootstrapAdminKey runs EnsureAdminKey until it succeeds or ctx ends, and
// reports whether it succeeded. A newly generated key is handed to announce
// (which prints it once; it is never logged). Storage errors are logged and
// retried: the admin API is unusable until this succeeds, but devices are
// not affected.
func (s *Service) BootstrapAdminKey(ctx context.Context, configured string, announce func(secret string)) bool {
	for {
		secret, err := s.EnsureAdminKey(ctx, configured)
		if err == nil {
			if secret != "" {
				announce(secret)
			}
			return true
		}
		s.log.Error("cannot ensure an admin API key; retrying", "err", err, "retry", bootstrapRetry)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(bootstrapRetry):
		}
	}
}
