package main

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"

	"github.com/meridian-iot/meridian/cmd/meridian/meridiantest"
	"github.com/meridian-iot/meridian/ingest/wire"
)

// TestServeEndToEnd checks the wiring across packages: a device registered
// through the admin API (devices) posts a batch over the HTTP fallback
// (ingest), gets an ack after commit (storage), and `meridian query` on the
// same store then sees the reading.
func TestServeEndToEnd(t *testing.T) {
	for name, args := range backends(t) {
		t.Run(name, func(t *testing.T) {
			cleanEnv(t)
			cfg := testConfig(t)
			if name == "postgres" {
				cfg.Storage.URL = testPGURL(t)
				args = []string{"--storage-url", cfg.Storage.URL}
			} else {
				args = []string{"--data-dir", cfg.Server.DataDir}
			}
			ts := startServe(t, cfg)
			key := waitAdminKey(t, ts)

			// Register a device.
			token := meridiantest.AddDevice(t, ts.base, key, "boiler-1")

			// POST one batch of two readings, then the same batch again.
			now := time.Now().UnixMilli()
			body := msgp.AppendMapHeader(nil, 3)
			body = msgp.AppendString(body, "type")
			body = msgp.AppendString(body, "batch")
			body = msgp.AppendString(body, "seq")
			body = msgp.AppendUint64(body, 1)
			body = msgp.AppendString(body, "readings")
			body = msgp.AppendArrayHeader(body, 2)
			for i, v := range []float64{21.5, 22} {
				body = msgp.AppendArrayHeader(body, 3)
				body = msgp.AppendInt64(body, now+int64(i))
				body = msgp.AppendString(body, "temp")
				body = msgp.AppendFloat64(body, v)
			}
			for i, wantDup := range []bool{false, true} {
				req, _ := http.NewRequest("POST", ts.base+"/v1/device/batches", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/msgpack")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var ack wire.Ack
				if _, err := ack.UnmarshalMsg(raw); err != nil || resp.StatusCode != 200 {
					t.Fatalf("post %d: status %d, body %q: %v\nlogs:\n%s", i, resp.StatusCode, raw, err, ts.logs)
				}
				if ack.Seq != 1 || ack.Duplicate != wantDup || (!wantDup && ack.Accepted != 2) {
					t.Errorf("post %d: ack %+v", i, ack)
				}
			}
			if err := ts.stop(); err != nil {
				t.Fatalf("serve: %v\nlogs:\n%s", err, ts.logs)
			}

			out, line, code := runCLI(t, append([]string{"query", "--format", "csv",
				"SELECT device, metric, value FROM telemetry ORDER BY time"}, args...)...)
			if code != 0 {
				t.Fatalf("query: exit %d: %s", code, line)
			}
			if want := "device,metric,value\nboiler-1,temp,21.5\nboiler-1,temp,22\n"; out != want {
				t.Errorf("query after ingest:\n%s\nwant:\n%s", out, want)
			}
		})
	}
}
