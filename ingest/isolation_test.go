package ingest_test

// Integration tests of failure isolation: a real ingest.Server on the real
// SQLite and PostgreSQL stores, 20 devices over WebSocket and the HTTP
// fallback, one of them sending what the stores cannot take. The point of
// each test is that the others keep getting acks.

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/ingest"
	"github.com/meridian-iot/meridian/ingest/telemetry"
	"github.com/meridian-iot/meridian/ingest/wire"
	"github.com/meridian-iot/meridian/storage/postgres"
	"github.com/meridian-iot/meridian/storage/sqlite"
	"github.com/meridian-iot/meridian/storage/storagetest"
)

// poisonValue is a reading value the tests make the database refuse (a
// CHECK constraint or a trigger added to the test database), standing in for
// any data error that passes the wire's validation.
const poisonValue = 666

// backend opens a fresh store; poison makes its database refuse readings
// with poisonValue.
type backend struct {
	name string
	open func(t testing.TB) (store ingest.Store, poison func(t testing.TB))
}

var backends = []backend{
	{"sqlite", func(t testing.TB) (ingest.Store, func(testing.TB)) {
		cfg := sqlite.DefaultConfig()
		cfg.Path = filepath.Join(t.TempDir(), "meridian.db")
		cfg.Migrate = true
		store, err := sqlite.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		return store, func(t testing.TB) {
			// RAISE(ABORT) fails the statement with SQLITE_CONSTRAINT, as a
			// CHECK would (SQLite cannot add one to an existing table).
			db, err := sql.Open("sqlite3", "file:"+filepath.ToSlash(cfg.Path)+"?_pragma=busy_timeout(5000)")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec(fmt.Sprintf(`CREATE TRIGGER test_poison BEFORE INSERT ON readings
				WHEN NEW.value = %d BEGIN SELECT RAISE(ABORT, 'poison reading'); END`, poisonValue)); err != nil {
				t.Fatal(err)
			}
		}
	}},
	{"postgres", func(t testing.TB) (ingest.Store, func(testing.TB)) {
		url := storagetest.NewPostgresDB(t)
		cfg := postgres.DefaultConfig()
		cfg.URL = url
		store, err := postgres.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := store.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		return store, func(t testing.TB) {
			c, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			// SQLSTATE 23514 (check_violation) on COPY.
			if _, err := c.Exec(context.Background(), fmt.Sprintf(`ALTER TABLE readings ADD CONSTRAINT test_poison CHECK (value <> %d)`, poisonValue)); err != nil {
				t.Fatal(err)
			}
		}
	}},
}

type tokenAuth struct{}

type unauthorized struct{}

func (unauthorized) Error() string      { return "unauthorized" }
func (unauthorized) Unauthorized() bool { return true }

func (tokenAuth) AuthenticateDevice(_ context.Context, token string) (string, error) {
	dev, ok := strings.CutPrefix(token, "tok-")
	if !ok || dev == "" {
		return "", unauthorized{}
	}
	return dev, nil
}

type ingestServer struct {
	srv  *ingest.Server
	reg  *prometheus.Registry
	ws   string // ws://host/v1/device
	http string // http://host
}

func startIngest(t testing.TB, store ingest.Store, mut func(*ingest.Config)) *ingestServer {
	t.Helper()
	cfg := ingest.DefaultConfig()
	cfg.ShutdownGrace = 5 * time.Second
	if mut != nil {
		mut(&cfg)
	}
	reg := prometheus.NewRegistry()
	srv, err := ingest.New(cfg, store, tokenAuth{}, ingest.Options{Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		cancel()
		<-runDone
		hs.CloseClientConnections()
		hs.Close()
	})
	return &ingestServer{srv: srv, reg: reg, ws: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/device", http: hs.URL}
}

// counter sums a counter family's series whose labels include want.
func (s *ingestServer) counter(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// device is a minimal protocol v1 WebSocket client.
type device struct {
	t    testing.TB
	conn net.Conn
	rw   io.ReadWriter
}

func dialDevice(t testing.TB, url, id string) (*device, wire.Hello) {
	t.Helper()
	d := ws.Dialer{
		Protocols: []string{wire.Subprotocol},
		Timeout:   10 * time.Second,
		Header:    ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer tok-" + id}}),
	}
	conn, br, _, err := d.Dial(context.Background(), url)
	if err != nil {
		t.Fatalf("%s: dial: %v", id, err)
	}
	t.Cleanup(func() { conn.Close() })
	dev := &device{t: t, conn: conn, rw: conn}
	if br != nil {
		// br holds bytes read past the handshake and reads on from conn.
		dev.rw = struct {
			io.Reader
			io.Writer
		}{br, conn}
	}
	typ, data, err := dev.read()
	if err != nil || typ != wire.TypeHello {
		t.Fatalf("%s: first frame %q %v, want hello", id, typ, err)
	}
	var h wire.Hello
	if _, err := h.UnmarshalMsg(data); err != nil {
		t.Fatal(err)
	}
	return dev, h
}

// read returns the next data frame and its type; a close frame is returned
// as a wsutil.ClosedError.
func (d *device) read() (string, []byte, error) {
	_ = d.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	data, _, err := wsutil.ReadServerData(d.rw)
	if err != nil {
		return "", nil, err
	}
	typ, err := wire.TypeOf(data)
	return typ, data, err
}

func (d *device) send(b *wire.Batch) error {
	data, err := b.MarshalMsg(nil)
	if err != nil {
		return err
	}
	_ = d.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return wsutil.WriteClientBinary(d.conn, data)
}

// expectRefusal reads until the error frame and close frame that answer a
// refused batch, failing on anything else (an ack included).
func (d *device) expectRefusal(closeCode int, errCode string) {
	d.t.Helper()
	typ, data, err := d.read()
	if err != nil || typ != wire.TypeError {
		d.t.Fatalf("got %q %v, want an error frame %s", typ, err, errCode)
	}
	var e wire.Error
	if _, err := e.UnmarshalMsg(data); err != nil || e.Code != errCode {
		d.t.Fatalf("error frame %+v %v, want code %s", e, err, errCode)
	}
	_, _, err = d.read()
	var ce wsutil.ClosedError
	if !errors.As(err, &ce) || int(ce.Code) != closeCode {
		d.t.Fatalf("after the error frame: %v, want close %d", err, closeCode)
	}
}

func batchOf(seq uint64, values ...float64) *wire.Batch {
	b := &wire.Batch{Type: wire.TypeBatch, Seq: seq}
	now := time.Now().UnixMilli()
	for _, v := range values {
		b.Readings = append(b.Readings, wire.Reading{T: now, HasT: true, Metric: "temp", Value: v})
	}
	return b
}

// post sends one batch over the HTTP fallback; it returns the status and
// the decoded error code or ack.
func post(t *testing.T, base, id string, b *wire.Batch) (int, string, wire.Ack) {
	t.Helper()
	body, _ := b.MarshalMsg(nil)
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/device/batches", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok-"+id)
	req.Header.Set("Content-Type", "application/msgpack")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var ack wire.Ack
	var e wire.Error
	if resp.StatusCode == http.StatusOK {
		if _, err := ack.UnmarshalMsg(data); err != nil {
			t.Fatalf("ack body: %v", err)
		}
		return resp.StatusCode, "", ack
	}
	if _, err := e.UnmarshalMsg(data); err != nil && !errors.Is(err, msgp.ErrShortBytes) {
		t.Logf("error body %q: %v", data, err)
	}
	return resp.StatusCode, e.Code, ack
}

// fleet runs good devices over WebSocket, each sending batches with up to
// 4 unacked until stop is closed and it has sent at least min batches. It
// checks every answer is the ack of the expected seq and returns the
// devices' ack latencies.
func fleet(t *testing.T, s *ingestServer, n, min int, stop <-chan struct{}) (wait func() []time.Duration) {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		lat []time.Duration
	)
	for i := range n {
		id := fmt.Sprintf("good-%02d", i)
		dev, hello := dialDevice(t, s.ws, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := map[uint64]time.Time{}
			next, acked := hello.Acked+1, hello.Acked
			for {
				select {
				case <-stop:
					if int(next-1) >= min {
						for acked < next-1 {
							if !dev.ack(id, &acked, sent, &mu, &lat) {
								return
							}
						}
						return
					}
				default:
				}
				for next-acked <= 4 {
					sent[next] = time.Now()
					if err := dev.send(batchOf(next, float64(next))); err != nil {
						t.Errorf("%s: send: %v", id, err)
						return
					}
					next++
				}
				if !dev.ack(id, &acked, sent, &mu, &lat) {
					return
				}
			}
		}()
	}
	return func() []time.Duration { wg.Wait(); return lat }
}

// ack reads one ack and checks it is the next seq.
func (d *device) ack(id string, acked *uint64, sent map[uint64]time.Time, mu *sync.Mutex, lat *[]time.Duration) bool {
	typ, data, err := d.read()
	if err != nil || typ != wire.TypeAck {
		d.t.Errorf("%s: got %q %v, want the ack of seq %d", id, typ, err, *acked+1)
		return false
	}
	var a wire.Ack
	if _, err := a.UnmarshalMsg(data); err != nil || a.Seq != *acked+1 || a.Accepted != 1 {
		d.t.Errorf("%s: ack %+v %v, want seq %d accepted 1", id, a, err, *acked+1)
		return false
	}
	*acked = a.Seq
	mu.Lock()
	*lat = append(*lat, time.Since(sent[a.Seq]))
	mu.Unlock()
	return true
}

func checkFleet(t *testing.T, s *ingestServer, store ingest.Store, lat []time.Duration, devices, min int) {
	t.Helper()
	if len(lat) < devices*min {
		t.Fatalf("%d acks, want at least %d", len(lat), devices*min)
	}
	var worst time.Duration
	for _, l := range lat {
		worst = max(worst, l)
	}
	t.Logf("%d acks to the good devices, slowest %s", len(lat), worst)
	for i := range devices {
		wm, err := store.Watermark(context.Background(), fmt.Sprintf("good-%02d", i))
		if err != nil || wm < uint64(min) {
			t.Errorf("good-%02d: watermark %d %v, want >= %d", i, wm, err, min)
		}
	}
	if err := s.srv.Ready(context.Background()); err != nil {
		t.Errorf("not ready after isolating the bad batches: %v", err)
	}
}

// TestErasedFlashSeq: a device sending seq 2^64-1 (its counter read from
// erased flash), over WebSocket and the HTTP fallback, again after every
// "reboot", gets 1002 / 400 bad_seq; the other 19 devices keep getting
// acks all along (they used to stop for good: the store refused the whole
// flush and the writer retried it forever).
func TestErasedFlashSeq(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			store, _ := be.open(t)
			s := startIngest(t, store, nil)
			const good, min = 19, 30
			stop := make(chan struct{})
			wait := fleet(t, s, good, min, stop)
			for reboot := range 3 {
				dev, _ := dialDevice(t, s.ws, "erased")
				if err := dev.send(batchOf(math.MaxUint64, 1)); err != nil {
					t.Fatal(err)
				}
				dev.expectRefusal(wire.CloseProtocol, "bad_seq")
				if status, code, _ := post(t, s.http, "erased", batchOf(math.MaxUint64, 1)); status != http.StatusBadRequest || code != "bad_seq" {
					t.Fatalf("reboot %d: HTTP answered %d %q, want 400 bad_seq", reboot, status, code)
				}
			}
			// The largest valid seq still works on both transports.
			dev, _ := dialDevice(t, s.ws, "erased")
			if err := dev.send(batchOf(math.MaxInt64-1, 1)); err != nil {
				t.Fatal(err)
			}
			if typ, _, err := dev.read(); err != nil || typ != wire.TypeAck {
				t.Fatalf("seq 2^63-2: got %q %v, want an ack", typ, err)
			}
			if status, _, ack := post(t, s.http, "erased", batchOf(math.MaxInt64, 1)); status != http.StatusOK || ack.Seq != math.MaxInt64 || ack.Duplicate {
				t.Fatalf("seq 2^63-1 over HTTP: %d %+v, want a fresh ack", status, ack)
			}
			close(stop)
			checkFleet(t, s, store, wait(), good, min)
		})
	}
}

// TestRefusedReadingIsolated: the database itself refuses one reading
// (a constraint the wire does not know about). The flush holding it is
// split; that batch alone is answered batch_refused (1007 / 400) and not
// stored, the device's later batches and every other device's commit.
// Linger makes the bad batch share its flush with the fleet's batches.
func TestRefusedReadingIsolated(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			store, poison := be.open(t)
			poison(t)
			s := startIngest(t, store, func(c *ingest.Config) { c.Linger = 20 * time.Millisecond })
			const good, min = 19, 30
			stop := make(chan struct{})
			wait := fleet(t, s, good, min, stop)

			dev, _ := dialDevice(t, s.ws, "poisoned")
			if err := dev.send(batchOf(1, 1)); err != nil {
				t.Fatal(err)
			}
			if typ, _, err := dev.read(); err != nil || typ != wire.TypeAck {
				t.Fatalf("seq 1: got %q %v, want an ack", typ, err)
			}
			if err := dev.send(batchOf(2, 1, poisonValue, 3)); err != nil {
				t.Fatal(err)
			}
			dev.expectRefusal(wire.CloseInvalidData, "batch_refused")
			dev, hello := dialDevice(t, s.ws, "poisoned")
			if hello.Acked != 1 {
				t.Fatalf("after the refusal hello.acked = %d, want 1 (seq 2 not stored)", hello.Acked)
			}
			if err := dev.send(batchOf(3, 3)); err != nil {
				t.Fatal(err)
			}
			if typ, _, err := dev.read(); err != nil || typ != wire.TypeAck {
				t.Fatalf("seq 3: got %q %v, want an ack", typ, err)
			}
			if status, code, _ := post(t, s.http, "poisoned", batchOf(4, poisonValue)); status != http.StatusBadRequest || code != "batch_refused" {
				t.Fatalf("HTTP: %d %q, want 400 batch_refused", status, code)
			}
			if status, _, ack := post(t, s.http, "poisoned", batchOf(5, 5)); status != http.StatusOK || ack.Seq != 5 || ack.Duplicate {
				t.Fatalf("HTTP seq 5: %d %+v, want a fresh ack", status, ack)
			}
			close(stop)
			checkFleet(t, s, store, wait(), good, min)
			if n := s.counter(t, "meridian_batches_refused_total", nil); n != 2 {
				t.Errorf("meridian_batches_refused_total = %v, want 2", n)
			}
			if n := s.counter(t, "meridian_flush_failures_total", map[string]string{"reason": "data"}); n < 2 {
				t.Errorf("meridian_flush_failures_total{reason=data} = %v, want >= 2", n)
			}
		})
	}
}

// TestStoresClassifyDataErrors: both backends mark errors caused by the
// data with telemetry.ErrInvalidData — what the pipeline bisects on — and
// still commit good batches afterwards.
func TestStoresClassifyDataErrors(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			store, poison := be.open(t)
			poison(t)
			now := time.Now().UnixMilli()
			for _, c := range []struct {
				name string
				b    telemetry.Batch
			}{
				{"seq above 2^63-1", telemetry.Batch{Device: "d", Seq: math.MaxUint64, Readings: []telemetry.Reading{{Time: now, Metric: "m", Value: 1}}}},
				{"refused reading", telemetry.Batch{Device: "d", Seq: 1, Readings: []telemetry.Reading{{Time: now, Metric: "m", Value: poisonValue}}}},
			} {
				t.Run(c.name, func(t *testing.T) {
					good := telemetry.Batch{Device: "other", Seq: 1, Readings: []telemetry.Reading{{Time: now, Metric: "m", Value: 1}}}
					_, err := store.Commit(context.Background(), []telemetry.Batch{good, c.b})
					if !errors.Is(err, telemetry.ErrInvalidData) {
						t.Fatalf("got %v, want an error wrapping telemetry.ErrInvalidData", err)
					}
				})
			}
			out, err := store.Commit(context.Background(), []telemetry.Batch{{Device: "other", Seq: 1, Readings: []telemetry.Reading{{Time: now, Metric: "m", Value: 1}}}})
			if err != nil || len(out) != 1 || out[0].Duplicate {
				t.Fatalf("good batch after the refusals: %v %+v", err, out)
			}
		})
	}
}
