#!/usr/bin/env bash
# Builds the image's predictd: a static release binary (glibc's crt-static), so the image needs
# no base and no libraries. Used both by the Containerfile's builder stage and by build.sh, so
# the two build the same binary. Prints the binary's path.
#
# Settings beyond the release profile, as environment so benchmarks' target/release stays as is:
# fat LTO in one codegen unit and stripped symbols make the binary about a fifth smaller;
# non-PIE (relocation-model=static) drops the dynamic relocations a static PIE carries.
# With --target given, RUSTFLAGS reach only predictd's own code and dependencies, not build
# scripts or proc macros, which must stay ordinary host programs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TARGET=${TARGET:-$(uname -m)-unknown-linux-gnu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/static}
export RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"
export CARGO_PROFILE_RELEASE_LTO=fat
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_STRIP=symbols
cargo build --release --locked --target "$TARGET" --bin predictd >&2
bin=$CARGO_TARGET_DIR/$TARGET/release/predictd
# A dynamic binary would start nowhere in a FROM scratch image: refuse it here.
# (readelf: binutils comes with the C toolchain cargo links with; `file` may be missing.)
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "$bin is not statically linked: $(readelf -l "$bin" | grep -o 'interpreter: [^]]*')" >&2
    exit 1
fi
echo "$bin"
