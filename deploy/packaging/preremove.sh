#!/bin/sh
# Before the files are removed (deb prerm, rpm %preun).
#   deb: $1 = "remove" on removal, "upgrade" on upgrade;
#   rpm: $1 = 0 on removal, 1 on upgrade.
# Only a removal stops the service; an upgrade keeps it running until
# postinstall restarts it on the new binary.
set -e

case "$1" in
remove | 0)
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now meridian.service || true
	fi
	;;
esac
exit 0
