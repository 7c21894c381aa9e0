#!/usr/bin/env bash
# The gates CI runs before the tests: rustfmt (rustfmt.toml) and clippy with warnings as errors
# over the project's own crates, and tsc over the admin page. vendor/bhtsne keeps upstream's
# formatting and lints, so it is left out of both (its patches are reviewed as a diff,
# vendor/bhtsne.diff).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
packages=(-p embeddingmap-proto -p service-kit -p embedding-service -p api-service -p end-to-end-tests)
# A rustup toolchain may lack the components; add them only then (a distribution's cargo has them
# as packages, and no rustup).
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --check "${packages[@]}"
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy --locked --all-targets "${packages[@]}" -- -D warnings
# The admin page's TypeScript, type-checked (Vite only strips the types).
npm_ci_if_changed admin-ui
(cd admin-ui && npm run --silent typecheck)
