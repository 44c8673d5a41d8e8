#!/usr/bin/env bash
# rootfs.sh BINARY DIR: lays out the image's whole file system in DIR/rootfs, the folder the
# Containerfile's final stage copies: the binary, the bundled models, a user and a /tmp.
set -euo pipefail
bin=$1
out=$2/rootfs
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/models" "$out/etc" "$out/tmp"
install -m 0755 "$bin" "$out/usr/local/bin/predictd"
# The model folders only: reference.json, the scripts and README are the repository's, not the
# server's.
for model in "$repo"/models/*/; do
    name=$(basename "$model")
    cp -r "$model" "$out/models/$name"
    rm -f "$out/models/$name/reference.json"
done
chmod -R a+rX,go-w "$out/models"
# The numeric user the manifests name (runAsUser: 65532); the names are for tools that show
# them, predictd needs none.
echo 'nonroot:x:65532:65532:predictd:/nonexistent:/sbin/nologin' >"$out/etc/passwd"
echo 'nonroot:x:65532:' >"$out/etc/group"
# Only explicit model control writes files (uploads); a read-only pod mounts a volume here.
chmod 1777 "$out/tmp"
