// Package deploy holds what an operator needs to run Meridian, and no
// library code: the systemd unit and environment file (systemd/), the default
// config (config/), nfpm packaging (nfpm.yaml, packaging/), the container
// image (Dockerfile), a compose stack (docker-compose.yml, mosquitto/),
// Kubernetes manifests (k8s/) and reverse proxy configs (proxy/).
//
// Its tests keep those files honest: every YAML file parses, every file they
// reference exists, every config key and MERIDIAN_* variable they set is one
// the binary knows, the timeouts agree with the server's heartbeat and
// shutdown grace, the release targets cross-compile, the packages build,
// and the shipped nginx config (and the HAProxy and Caddy configs, where
// installed) holds a real device WebSocket open past nginx's default 60 s
// idle timeout. See docs/deploy.md and docs/edge.md.
//
// Tests start external processes (the meridian binary, nginx, haproxy,
// caddy) and own them: each is stopped at cleanup. The slow ones skip under
// -short.
package deploy
