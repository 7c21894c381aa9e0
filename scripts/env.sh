# Sourced by the scripts: one build cache outside the checkout, so every clone (and CI) reuses
# the FAISS build instead of compiling it again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/embedding-map/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
