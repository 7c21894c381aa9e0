#!/usr/bin/env bash
# Side-by-side map figures: this project's pipeline against openTSNE and scikit-learn on the same
# corpora (bench/side_by_side.py does the measuring). Corpora by name, default the quick ones:
#   scripts/side-by-side.sh [digits] [seed530] [synth10k] [synth60k] [synth200k]
# Synthetic corpora are generated into bench/data/ on first use. REPEAT (default 3) runs of ours;
# peers run 3 times below 60k points and once above (openTSNE takes minutes there); scikit-learn
# is left out from 60k on, and both peers at 200k, where only the absolute targets apply.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
venv="$HOME/.cache/embedding-map/venv-peers"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r bench/requirements.txt
cargo build --release --locked -p embedding-service --bins
mkdir -p bench/results

synthetic() { # name n dims
  [ -f "bench/data/$1_X.npy" ] || "$venv/bin/python" bench/make_corpora.py --n "$2" --dims "$3" --out "bench/data/$1"
  x="bench/data/$1_X.npy" y="bench/data/$1_y.npy"
}

for name in "${@:-digits seed530 synth10k}"; do
  for corpus in $name; do
    peers=opentsne,sklearn peer_repeat=3
    case $corpus in
      digits) x=embedding-service/data/digits_X.npy y=embedding-service/data/digits_y.npy ;;
      seed530) synthetic seed530 530 768 ;;
      synth10k) synthetic synth10k 10000 384 ;;
      synth60k) synthetic synth60k 60000 384; peers=opentsne peer_repeat=1 ;;
      synth200k) synthetic synth200k 200000 384; peers= ;;
      *) echo "unknown corpus $corpus (digits seed530 synth10k synth60k synth200k)" >&2; exit 2 ;;
    esac
    "$venv/bin/python" bench/side_by_side.py "$x" --labels "$y" --repeat "${REPEAT:-3}" \
      --peers "$peers" --peer-repeat "$peer_repeat" --json "bench/results/$corpus.json" \
      | tee "bench/results/$corpus.md"
  done
done
