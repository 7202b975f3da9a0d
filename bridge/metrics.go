package bridge

import "github.com/prometheus/client_golang/prometheus"

// metrics are the bridge's Prometheus series, registered on the registry the
// caller passes (never the global default).
type metrics struct {
	connected  prometheus.Gauge
	published  *prometheus.CounterVec // kind: telemetry, reading, status, session, result, command, node
	dropped    *prometheus.CounterVec // reason: queue_full, publish_error, encode, inbound_full, remote_full, results_full
	commands   *prometheus.CounterVec // outcome
	queueLen   prometheus.GaugeFunc
	remote     prometheus.Counter
	skipped    prometheus.Counter
	takeovers  prometheus.Counter
	authFailed prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, queueLen func() float64) *metrics {
	m := &metrics{
		connected:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_mqtt_connected", Help: "1 while the bridge's MQTT client is connected to its broker."}),
		published:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_mqtt_published_total", Help: "MQTT messages published by the bridge, by kind."}, []string{"kind"}),
		dropped:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_mqtt_dropped_total", Help: "MQTT messages the bridge dropped, by reason (queue_full = oldest telemetry batch overwritten)."}, []string{"reason"}),
		commands:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_mqtt_commands_total", Help: "Commands handled by this node, by outcome."}, []string{"outcome"}),
		queueLen:   prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_mqtt_queue_batches", Help: "Committed batches waiting to be published."}, queueLen),
		remote:     prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_mqtt_remote_batches_total", Help: "Batches committed by other nodes received over MQTT."}),
		skipped:    prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_mqtt_skipped_batches_total", Help: "Committed batches not encoded or published because no subscriber of the embedded broker could receive them."}),
		takeovers:  prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_mqtt_takeovers_total", Help: "Local device sessions closed because another node claimed the device."}),
		authFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_mqtt_broker_auth_failures_total", Help: "Connections refused by the embedded broker's authentication."}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.published, m.dropped, m.commands, m.queueLen, m.remote, m.skipped, m.takeovers, m.authFailed)
	}
	return m
}
