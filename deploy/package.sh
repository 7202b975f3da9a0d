#!/bin/sh
# deploy/package.sh [DIST]: build a .deb and an .rpm with nfpm for every
# release binary DIST/meridian-linux-<arch> (`make release` output), then
# refresh DIST/SHA256SUMS. DIST defaults to dist, relative to the repository
# root; the packages land beside the binaries.
#
#   VERSION  the release version (v1.2.3, or a git describe); a version that
#            does not start with a digit becomes 0.0.0-<version>, because
#            package managers compare versions numerically.
#   NFPM     the nfpm command; by default a pinned nfpm run through the Go
#            toolchain, so nothing needs installing.
set -eu

cd "$(dirname "$0")/.."
dist=${1:-dist}
NFPM=${NFPM:-go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2}

version=${VERSION:-dev}
version=${version#v}
case $version in
[0-9]*) ;;
*) version=0.0.0-$version ;;
esac

found=no
for bin in "$dist"/meridian-linux-*; do
	[ -f "$bin" ] || continue
	# Go's architecture names, as `make release` suffixes them, to nfpm's.
	case ${bin##*/meridian-linux-} in
	amd64) arch=amd64 ;;
	arm64) arch=arm64 ;;
	armv7) arch=arm7 ;;
	armv6) arch=arm6 ;;
	*) echo "package: skipping $bin (unknown architecture)" >&2; continue ;;
	esac
	found=yes
	for packager in deb rpm; do
		MERIDIAN_BINARY=$bin PKG_ARCH=$arch PKG_VERSION=$version \
			$NFPM package --config deploy/nfpm.yaml --packager "$packager" --target "$dist/"
	done
done
if [ "$found" = no ]; then
	echo "package: no $dist/meridian-linux-* binaries; run make release first" >&2
	exit 1
fi

cd "$dist"
sha256sum meridian-linux-* *.deb *.rpm > SHA256SUMS
