package dashboard

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	clients        prometheus.Gauge
	disconnects    *prometheus.CounterVec
	downsampled    prometheus.Counter
	updates        prometheus.Counter
	updatesDropped *prometheus.CounterVec
	publishDropped *prometheus.CounterVec
	logins         *prometheus.CounterVec
}

// newMetrics registers on reg; a nil reg keeps them unregistered (tests).
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meridian_dashboard_live_clients",
			Help: "Live (/v1/live WebSocket and SSE) clients connected.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_dashboard_live_disconnects_total",
			Help: "Live clients disconnected by the server, by reason (slow_consumer, write_failed, protocol_error, session_ended, shutdown).",
		}, []string{"reason"}),
		downsampled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_dashboard_live_downsampled_total",
			Help: "Times a live client's queue passed half full and its updates were slowed to 1/s per series.",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_dashboard_live_updates_total",
			Help: "Series updates queued to live clients.",
		}),
		updatesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_dashboard_live_readings_dropped_total",
			Help: "Readings not shown to a live client, by reason.",
		}, []string{"reason"}),
		publishDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_dashboard_publish_dropped_total",
			Help: "Batches or presence events the live hub dropped instead of slowing ingestion, by reason.",
		}, []string{"reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_dashboard_logins_total",
			Help: "Dashboard login attempts by result (ok, invalid, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.disconnects, m.downsampled, m.updates, m.updatesDropped, m.publishDropped, m.logins)
	}
	return m
}
