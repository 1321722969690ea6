#!/usr/bin/env bash
# Builds quiver's image from a binary built on this host (no Rust image needed), with the
# unchanged top-level Dockerfile: the builder stage runs on the local base image and just
# installs the binary.
#
#   deploy/docker/build-image.sh [--binary PATH] [--tag TAG]
#
# Default binary: target/release/quiver (built with `cargo build --release` if missing).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
binary=""
tag=quiver:latest
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    binary=$repo/target/release/quiver
    [ -x "$binary" ] || (cd "$repo" && cargo build --release --locked)
fi
"$repo"/deploy/docker/base-image.sh debian:bookworm-slim
ctx=$(mktemp -d /tmp/quiver-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$repo"/Dockerfile "$ctx"/Dockerfile
# Debug info is for profiling on the host; the image carries a stripped copy.
strip -o "$ctx"/quiver "$binary" 2>/dev/null || cp "$binary" "$ctx"/quiver
docker build -q -t "$tag" \
    --build-arg BUILDER_IMAGE=debian:bookworm-slim \
    --build-arg PREBUILT=quiver \
    "$ctx"
# The builder stage's image is only a step; drop it.
docker image prune -f --filter label=quiver.stage=build >/dev/null
echo "built $tag"
