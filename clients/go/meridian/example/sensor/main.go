// Command sensor is the device of docs/connect-go.md: it connects to a
// Meridian server with a device token, sends a temperature reading every
// few seconds, prints each ack, answers commands, and stops after -n
// readings once they are all acked.
//
//	MERIDIAN_TOKEN=... go run ./clients/go/meridian/example/sensor
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"syscall"
	"time"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sensor:", err)
		os.Exit(1)
	}
}

func run() error {
	url := flag.String("url", envOr("MERIDIAN_URL", "http://localhost:8470"), "server URL (env MERIDIAN_URL)")
	n := flag.Int("n", 10, "readings to send before exiting (0: until Ctrl-C)")
	every := flag.Duration("every", 2*time.Second, "time between readings")
	httpOnly := flag.Bool("http", false, "use the HTTP fallback instead of a WebSocket")
	flag.Parse()
	token := os.Getenv("MERIDIAN_TOKEN")
	if token == "" {
		return errors.New("set MERIDIAN_TOKEN to the device token (meridian device add prints it)")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	acked := make(chan meridian.Ack, 16)
	cfg := meridian.Config{
		URL:    *url,
		Token:  token,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		OnAck:  func(a meridian.Ack) { acked <- a },
		OnCommand: func(_ context.Context, c meridian.Command) meridian.Result {
			fmt.Printf("command %s %q\n", c.ID, c.Name)
			return meridian.Result{OK: true}
		},
	}
	if *httpOnly {
		cfg.Transport = meridian.HTTP
	}
	client, err := meridian.New(cfg)
	if err != nil {
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- client.Run(ctx) }()

	tick := time.NewTicker(*every)
	defer tick.Stop()
	sent, done := 0, 0
	for *n == 0 || done < *n {
		select {
		case <-ctx.Done():
			return <-runErr
		case err := <-runErr:
			return err // refused: wrong token, or the device was disabled
		case a := <-acked:
			done++
			fmt.Printf("ack seq=%d accepted=%d rejected=%d duplicate=%v %v\n", a.Seq, a.Accepted, a.Rejected, a.Duplicate, a.Errors)
		case now := <-tick.C:
			if *n > 0 && sent == *n {
				continue
			}
			// A slow daily-ish wave around 21 °C.
			temp := 21 + 2*math.Sin(float64(now.Unix()%3600)/3600*2*math.Pi)
			if err := client.Send(ctx, []meridian.Reading{{Time: now, Metric: "temp", Value: math.Round(temp*100) / 100}}); err != nil {
				return err
			}
			sent++
			fmt.Printf("sent temp=%.2f\n", temp)
		}
	}
	stop()
	return <-runErr
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
