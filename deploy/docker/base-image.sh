#!/usr/bin/env bash
# Makes the image the Dockerfile's final stage starts FROM, on a machine that cannot pull images:
# a minimal Debian 12 (bookworm, glibc 2.36, like the build host) root filesystem made with
# debootstrap, trimmed, and imported with `docker import` under the very tag the Dockerfile names,
# so that `docker build` finds it locally and never pulls. Does nothing if the tag exists.
#
#   deploy/docker/base-image.sh [TAG]      (default debian:bookworm-slim; needs root)
set -euo pipefail
tag=${1:-debian:bookworm-slim}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already present"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    apt-get install -y debootstrap >/dev/null 2>&1 || { apt-get update && apt-get install -y debootstrap; }
fi
# The Debian mirror apt already uses (the only one reachable here).
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/quiver-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/tmp/quiver-debootstrap.log 2>&1 \
    || { tail -n 30 /tmp/quiver-debootstrap.log; exit 1; }
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$tag"
echo "imported $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
