#!/usr/bin/env bash
# The gates CI runs before the tests: rustfmt (rustfmt.toml) and clippy with warnings as errors,
# over the project's own crates. vendor/bhtsne keeps upstream's formatting and lints, so it is
# left out of both (its patches are reviewed as a diff, vendor/bhtsne.diff).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
packages=(-p embeddingmap-proto -p service-kit -p embedding-service -p api-service -p end-to-end-tests)
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo fmt --check "${packages[@]}"
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy --locked --all-targets "${packages[@]}" -- -D warnings
