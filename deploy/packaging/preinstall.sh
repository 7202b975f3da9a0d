#!/bin/sh
# Before the files are unpacked (deb preinst, rpm %pre): the config file is
# owned by group meridian and the service runs as user meridian, so both must
# exist first. Safe to run again on upgrade.
set -e

if ! getent group meridian >/dev/null 2>&1; then
	groupadd --system meridian
fi
if ! getent passwd meridian >/dev/null 2>&1; then
	nologin=/bin/false
	for s in /usr/sbin/nologin /sbin/nologin; do
		if [ -x "$s" ]; then nologin=$s; break; fi
	done
	# The home is the unit's StateDirectory; systemd creates it at first start.
	useradd --system --gid meridian --home-dir /var/lib/meridian --no-create-home \
		--shell "$nologin" --comment "Meridian telemetry server" meridian
fi
exit 0
