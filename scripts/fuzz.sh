#!/usr/bin/env bash
# The long variant: runs each fuzz target for SECONDS (default 60), then minimises its corpus,
# which is committed and replayed by the regular tests. cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/embedding-map/fuzz-target}"
for target in json_bodies npy_corpus faiss_index; do
  echo "== $target: ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536
  cargo fuzz cmin -O "$target" "corpus/$target"
done
