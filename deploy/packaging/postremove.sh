#!/bin/sh
# After the files are removed (deb postrm, rpm %postun).
#   deb: $1 = "remove", "purge", "upgrade", ...; rpm: $1 = 0 on removal.
# Telemetry is never deleted by the package manager: /var/lib/meridian and
# the meridian user stay until the operator removes them.
set -e

case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		systemctl daemon-reload || true
	fi
	if [ -d /var/lib/meridian ] || [ -d /var/lib/private/meridian ]; then
		echo "meridian: data kept in /var/lib/meridian; delete it yourself if it is no longer needed."
	fi
	;;
esac
exit 0
