#!/bin/sh
# install-deps.sh - installs what tblk needs to build, test and benchmark on Debian 12
# (as root): the compiler, the libraries, and the reference tools the differential tests
# and benchmarks compare against. Does nothing that is already done.
set -eu
pkgs="build-essential pkg-config libglib2.0-dev libaio-dev liburing-dev zlib1g-dev
libzstd-dev perl python3 qemu-utils fio clang qemu-system-x86 nbdkit libnbd-bin
busybox-static linux-image-amd64 kmod cpio nbd-client groff-base man-db"
missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
