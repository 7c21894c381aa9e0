#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests of the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked
