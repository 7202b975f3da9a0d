#!/bin/sh
# After the files are in place (deb postinst, rpm %post).
#   deb: $1 = "configure", $2 = the previously installed version (empty on a
#        fresh install); rpm: $1 = 1 on install, 2 or more on upgrade.
# A fresh install does not start the server: it listens on all interfaces,
# so the operator reviews /etc/meridian first. An upgrade restarts a running
# server on the new binary (schema migrations run at its start).
set -e

upgrade=no
case "$1" in
configure) if [ -n "$2" ]; then upgrade=yes; fi ;;
[0-9]*) if [ "$1" -ge 2 ]; then upgrade=yes; fi ;;
esac

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload || true
	if [ "$upgrade" = yes ]; then
		systemctl try-restart meridian.service || true
		exit 0
	fi
fi

if [ "$upgrade" = no ]; then
	cat <<'MSG'
meridian is installed but not started. Review /etc/meridian/meridian.yaml
and /etc/meridian/meridian.env, then:
    systemctl enable --now meridian
On its first start the server prints an admin API key once:
    journalctl -u meridian | grep -A2 'admin key'
MSG
fi
exit 0
