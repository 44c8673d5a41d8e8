#!/usr/bin/env bash
# build.sh [IMAGE]: builds the Containerfile's image with podman without pulling anything: the
# binary is built here (cargo-build.sh) and its file system (rootfs.sh) stands in for the
# Containerfile's builder stage, so the final stage, the only one in the image, is the same.
# IMAGE defaults to predictd:VERSION (Cargo.toml's). Prints the image's size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${1:-predictd:$version}
ctx=${CARGO_TARGET_DIR:-target/static}/image
bin=$(deploy/image/cargo-build.sh)
deploy/image/rootfs.sh "$bin" "$ctx"
# The context is the small folder: the skipped builder stage's COPY . . never runs.
podman build --pull=never --build-context builder="$ctx" -f Containerfile -t "$image" "$ctx" >&2
size=$(podman image inspect --format '{{.Size}}' "$image")
# What a registry stores and a node pulls: the layer, gzip-compressed.
gz=$(podman image save --format oci-archive "$image" | gzip -c | wc -c)
echo "built $image: $((size / 1000000)) MB ($size bytes), $((gz / 1000000)) MB compressed"
