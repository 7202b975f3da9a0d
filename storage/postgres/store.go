package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-iot/meridian/storage"
)

// ErrNotReady is wrapped by every data method's error until the store has
// reached the database, detected its mode and found the schema current.
var ErrNotReady = errors.New("storage not ready")

// Store is the PostgreSQL backend. Create it with Open.
type Store struct {
	cfg  Config
	log  *slog.Logger
	pool *pgxpool.Pool
	// qpool is where ad-hoc SQL runs: QueryURL's role (or URL's), its own
	// QueryConns connections, and a cap on one message from the server so
	// a huge value fails instead of filling memory.
	qpool *pgxpool.Pool
	// queryRoleOK is set once the role qpool logs in as passed
	// checkQueryRole.
	queryRoleOK atomic.Bool

	// state is set once, by whoever completes setup first (the background
	// loop or Migrate); readers load it without locking.
	state   atomic.Pointer[readyState]
	readyCh chan struct{}
	once    sync.Once

	mu      sync.Mutex
	lastErr error // why not ready yet; guarded by mu

	deviceIDs sync.Map // device name -> int32, never changes once set
	metricIDs sync.Map // metric name -> int32, never changes once set

	lookups tokenLookups // see tokenlookup.go

	// life ends when the store closes: background work that serves many
	// callers (setup, token lookup batches) runs under it.
	life   context.Context
	cancel context.CancelFunc
	done   chan struct{}
	// now is the wall clock, replaceable in tests.
	now func() time.Time
	// copyMin is the flush size from which Commit uses COPY (see the
	// constant); tests and benchmarks change it to compare the two ways.
	copyMin int
}

type readyState struct {
	mode string
}

// Open validates cfg and returns a store whose pool connects lazily. It does
// not fail when the database is unreachable: a background goroutine keeps
// trying (with backoff) to detect the mode and migrate, and data methods
// return ErrNotReady until it succeeds. Close stops it.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parse storage.postgres.url: %w", err)
	}
	pcfg.MaxConns = cfg.MaxConns
	pcfg.MinConns = 0
	// A connection idle for a while may have been cut by a NAT or a
	// database restart; check before handing it out.
	pcfg.MaxConnIdleTime = 5 * time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	qurl := cfg.QueryURL
	if qurl == "" {
		qurl = cfg.URL
	}
	qcfg, err := pgxpool.ParseConfig(qurl)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("parse storage.postgres.query_url: %w", err)
	}
	qcfg.MaxConns = cfg.QueryConns
	qcfg.MinConns = 0
	qcfg.MaxConnIdleTime = 5 * time.Minute
	qcfg.ConnConfig.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		f := pgproto3.NewFrontend(r, w)
		f.SetMaxBodyLen(maxQueryMessage)
		return f
	}
	qpool, err := pgxpool.NewWithConfig(ctx, qcfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("create query pool: %w", err)
	}
	bg, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:     cfg,
		log:     log,
		pool:    pool,
		qpool:   qpool,
		readyCh: make(chan struct{}),
		life:    bg,
		cancel:  cancel,
		done:    make(chan struct{}),
		now:     time.Now,
		copyMin: copyMin,
		lastErr: errors.New("not yet connected"),
	}
	go s.prepareLoop(bg)
	return s, nil
}

// prepareLoop retries setup until it succeeds, hits a permanent error or
// the store closes. Backoff doubles from 100ms to 5s so a database that comes
// back is noticed quickly without hammering one that stays down.
func (s *Store) prepareLoop(ctx context.Context) {
	defer close(s.done)
	backoff := 100 * time.Millisecond
	for {
		err := s.setup(ctx, s.cfg.Migrate)
		if err == nil {
			return
		}
		s.setErr(err)
		if errors.Is(err, storage.ErrSchemaTooNew) {
			s.log.Error("storage unusable", "err", err)
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("storage not ready, retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Store) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *Store) markReady(mode string) {
	s.once.Do(func() {
		s.state.Store(&readyState{mode: mode})
		close(s.readyCh)
		s.log.Info("storage ready", "backend", "postgres", "mode", mode)
	})
}

// ready returns nil once the store can serve data calls.
func (s *Store) ready() error {
	if s.state.Load() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Errorf("%w: %w", ErrNotReady, s.lastErr)
}

// WaitReady blocks until the store is ready, setup failed permanently
// (storage.ErrSchemaTooNew: the binary must not run against this database),
// or ctx ends (then the error also says why the store is not ready).
func (s *Store) WaitReady(ctx context.Context) error {
	select {
	case <-s.readyCh:
		return nil
	case <-s.done:
		select {
		case <-s.readyCh:
			return nil
		default:
		}
		return s.ready()
	case <-ctx.Done():
		return errors.Join(ctx.Err(), s.ready())
	}
}

// Mode is storage.ModeTimescale or storage.ModePostgres once ready, "" before.
func (s *Store) Mode() string {
	if st := s.state.Load(); st != nil {
		return st.mode
	}
	return ""
}

// Ping reports whether the store is ready and the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.ready(); err != nil {
		return err
	}
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", err)
	}
	return nil
}

// Close stops the background setup and closes the pool.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.qpool.Close()
	s.pool.Close()
	return nil
}
