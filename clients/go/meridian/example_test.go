package meridian_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tinylib/msgp/msgp"

	meridian "github.com/meridian-iot/meridian/clients/go/meridian"
)

// A device that sends one batch and waits for the server to say it is
// durable. exampleServer stands in for `meridian serve`; against a real
// server use its URL (http://localhost:8470) and the token from
// `meridian device add`.
func Example() {
	url, stop := exampleServer()
	defer stop()

	acked := make(chan meridian.Ack, 1)
	client, err := meridian.New(meridian.Config{
		URL:   url,
		Token: "tok-boiler-1",
		OnAck: func(a meridian.Ack) { acked <- a },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()

	err = client.Send(ctx, []meridian.Reading{
		{Time: time.Now(), Metric: "temp", Value: 21.5},
		{Time: time.Now(), Metric: "door", Value: 1},
	})
	if err != nil {
		log.Fatal(err)
	}
	a := <-acked
	fmt.Printf("batch %d: %d readings stored\n", a.Seq, a.Accepted)

	cancel()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output: batch 1: 2 readings stored
}

// Readings the server refuses are counted in the ack, with the reason; the
// rest of the batch is stored. Do not resend rejected readings: the same
// bytes fail again.
func ExampleAck() {
	url, stop := exampleServer()
	defer stop()

	acked := make(chan meridian.Ack, 1)
	client, err := meridian.New(meridian.Config{URL: url, Token: "tok-boiler-2", OnAck: func(a meridian.Ack) { acked <- a }})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = client.Run(ctx) }()

	_ = client.Send(ctx, []meridian.Reading{
		{Time: time.Now(), Metric: "temp", Value: 21.5},
		{Time: time.Now(), Metric: "boiler temp", Value: 60}, // a space is not allowed
	})
	a := <-acked
	fmt.Println(a.Accepted, "stored,", a.Rejected, "rejected:", a.Errors[0])
	// Output: 1 stored, 1 rejected: metric must be 1-128 bytes of [A-Za-z0-9_.:/-]
}

// Answering operator commands (sent over MQTT or the API): OnCommand
// returns the result the server passes back to the operator.
func ExampleConfig_onCommand() {
	cfg := meridian.Config{
		URL:   "http://localhost:8470",
		Token: "device-token",
		OnCommand: func(_ context.Context, c meridian.Command) meridian.Result {
			if c.Name != "reboot" {
				return meridian.Result{OK: false, Payload: msgp.AppendString(nil, "unknown command")}
			}
			// Answer at once and do the slow part elsewhere: this runs on
			// the connection's read loop.
			go func() { /* schedule the reboot */ }()
			return meridian.Result{OK: true}
		},
	}
	_, err := meridian.New(cfg)
	fmt.Println(err)
	// Output: <nil>
}

// Run stops for good when the server refuses the device: a wrong token
// (HTTP 401) or a 1008 close (device disabled, token revoked, or a second
// connection with the same token took the session over).
func ExampleRefusedError() {
	url, stop := exampleServer()
	defer stop()

	client, err := meridian.New(meridian.Config{URL: url, Token: "not-a-token"})
	if err != nil {
		log.Fatal(err)
	}
	err = client.Run(context.Background())
	var refused *meridian.RefusedError
	if errors.As(err, &refused) {
		fmt.Println("refused with", refused.Code)
	}
	// Output: refused with 401
}

// A device on a network that cannot keep a WebSocket open uses the HTTP
// fallback; everything else stays the same (no commands over HTTP). A
// StateFile keeps unacked batches across restarts of the process.
func ExampleConfig_http() {
	url, stop := exampleServer()
	defer stop()

	done := make(chan struct{})
	client, err := meridian.New(meridian.Config{
		URL:       url,
		Token:     "tok-meter-9",
		Transport: meridian.HTTP,
		OnAck:     func(a meridian.Ack) { fmt.Println("acked", a.Seq); close(done) },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = client.Run(ctx) }()
	_ = client.Send(ctx, []meridian.Reading{{Time: time.Now(), Metric: "energy_kwh", Value: 1234.5}})
	<-done
	// Output: acked 1
}
