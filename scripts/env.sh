# Sourced by the scripts: one build cache outside the checkout, so every clone (and CI) reuses
# the FAISS build instead of compiling it again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/embedding-map/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# `npm ci` in directory $1 only when its package-lock.json changed since the last install there
# (a stamp beside node_modules holds the lock file's hash), so a test run does not reinstall.
npm_ci_if_changed() {
  local dir=$1 stamp="$1/node_modules/.lock-sha256" hash
  hash=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$hash" ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$hash" >"$stamp"
  fi
}
