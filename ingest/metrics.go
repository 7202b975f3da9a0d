package ingest

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are ingest's Prometheus series, registered on the registry the
// caller passes (never the global default).
type metrics struct {
	connections         prometheus.Gauge
	handshakes          *prometheus.CounterVec // result: ok, unauthorized, error, rejected
	frames              *prometheus.CounterVec // type
	closes              *prometheus.CounterVec // code
	readingsAccepted    prometheus.Counter
	readingsRejected    *prometheus.CounterVec // reason
	readingsStored      prometheus.Counter
	batchReadings       prometheus.Histogram
	flushSeconds        prometheus.Histogram
	flushFailures       *prometheus.CounterVec // reason: data, unavailable, timeout
	flushFailing        *prometheus.GaugeVec   // writer
	batchesRefused      prometheus.Counter
	queueReadings       prometheus.Gauge
	backpressure        prometheus.Counter
	backpressureSeconds prometheus.Counter
	acks                prometheus.Counter
	duplicates          prometheus.Counter
	ratePaused          prometheus.Counter
	ratePausedSeconds   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_device_connections", Help: "Open device WebSocket connections."}),
		handshakes:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_device_handshakes_total", Help: "Device connection attempts by result."}, []string{"result"}),
		frames:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_device_frames_total", Help: "Frames received from devices by message type."}, []string{"type"}),
		closes:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_device_closes_total", Help: "Device connections closed by the server, by close code."}, []string{"code"}),
		readingsAccepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_readings_accepted_total", Help: "Readings that passed validation."}),
		readingsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_readings_rejected_total", Help: "Readings rejected by validation, by reason."}, []string{"reason"}),
		readingsStored:   prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_readings_stored_total", Help: "Readings committed to storage (duplicates excluded)."}),
		batchReadings: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_flush_readings", Help: "Readings per storage flush.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_flush_seconds", Help: "Latency of one storage commit attempt.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		flushFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_flush_failures_total",
			Help: "Failed storage commit attempts by reason: unavailable and timeout are retried, data splits the flush to isolate the refused batch."}, []string{"reason"}),
		flushFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meridian_flush_consecutive_failures",
			Help: "Consecutive failed (retried) commit attempts of each writer; 0 once a commit succeeds. /readyz fails from 5."}, []string{"writer"}),
		batchesRefused:      prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_batches_refused_total", Help: "Batches the store refused as invalid data, answered with batch_refused and not stored."}),
		queueReadings:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_queue_readings", Help: "Readings accepted but not yet committed."}),
		backpressure:        prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_backpressure_waits_total", Help: "Times a device read loop paused because the queue was full."}),
		backpressureSeconds: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_backpressure_seconds_total", Help: "Time device read loops spent paused on a full queue."}),
		acks:                prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_acks_total", Help: "Batches acknowledged to devices."}),
		duplicates:          prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_duplicate_batches_total", Help: "Batches recognised as resends and not stored again."}),
		ratePaused:          prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_device_rate_paused_total", Help: "Batches whose session stopped reading because the device was over its readings rate."}),
		ratePausedSeconds:   prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_device_rate_paused_seconds_total", Help: "Time device sessions spent paused over their readings rate."}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.handshakes, m.frames, m.closes, m.readingsAccepted, m.readingsRejected,
			m.readingsStored, m.batchReadings, m.flushSeconds, m.flushFailures, m.flushFailing, m.batchesRefused, m.queueReadings, m.backpressure,
			m.backpressureSeconds, m.acks, m.duplicates, m.ratePaused, m.ratePausedSeconds)
	}
	return m
}

// rejectLabel maps a validation reason to a small fixed label set, so the
// metric's cardinality stays bounded whatever devices send.
func rejectLabel(reason string) string {
	switch {
	case strings.HasPrefix(reason, "metric"):
		return "metric"
	case strings.Contains(reason, "max_future"):
		return "future"
	case strings.Contains(reason, "max_past"):
		return "past"
	case strings.HasPrefix(reason, "value"):
		return "value"
	case strings.HasPrefix(reason, "t "):
		return "time"
	default:
		return "shape"
	}
}
