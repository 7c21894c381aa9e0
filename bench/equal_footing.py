#!/usr/bin/env python3
"""Map quality on equal footing: our maps against openTSNE's at every input preparation.

    python bench/equal_footing.py bench/data/docs10k [bench/data/code10k ...] \\
        [--ours 'defaults:' --ours 'exact:--knn exact'] [--peer-dims 50,100,200] [--peer-iters 500,1000] \\
        [--peer-neighbors auto,exact]

Each corpus is named by its prefix: PREFIX_X.npy (the vectors) and PREFIX_y.npy (labels).
- Ours, once per --ours entry `LABEL:FLAGS` (FLAGS go to `embedding-map-bench`; NAME=VALUE tokens
  among them are set in its environment instead): three runs, the median time, and the scores of
  the map, which is the same bit for bit in every run.
- openTSNE (bench/peers.py, the seed's settings) at each PCA width of --peer-dims narrower than the
  corpus and each schedule of --peer-iters (either empty: none), and with each neighbour search of
  --peer-neighbors (its default, Annoy, or exact), once: its runs take minutes.
  Its figures are kept in RESULTS/PREFIX.json and not run again unless --rerun-peers.
Scores: 10-NN label accuracy, 10-NN preservation and the global Spearman score (bench/peers.py
says how each is computed; the same code scores every map). Prints one markdown table a corpus,
with the openTSNE maps that are better than ours on both neighbour scores named per row.
"""
import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SCORES = ["knn10", "preservation10", "global_spearman"]


def run_json(argv, env=None):
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def score(args, prefix, map_path):
    return run_json([args.python, str(HERE / "peers.py"), "score", str(map_path),
                     "--labels", f"{prefix}_y.npy", "--data", f"{prefix}_X.npy"])[-1]


def ours(args, prefix, label, flags):
    env = dict(os.environ)
    argv = [str(args.bin_dir / "embedding-map-bench"), "--corpus", f"{prefix}_X.npy", "--no-preservation"]
    for token in shlex.split(flags):
        name, _, value = token.partition("=")
        if value and name.isupper():
            env[name] = value
        else:
            argv.append(token)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "map.npy"
        runs = run_json(argv + ["--repeat", "3", "--out", str(out)], env)
        row = {"name": f"ours, {label}", "seconds": statistics.median(r["seconds"]["total"] for r in runs),
               "pca": runs[0].get("pca_dimensions"), **{k: v for k, v in score(args, prefix, out).items() if k in SCORES}}
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def opentsne(args, prefix, dims, iters, neighbors):
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "map.npy"
        report = run_json([args.python, str(HERE / "peers.py"), "run", "opentsne", f"{prefix}_X.npy",
                           "--labels", f"{prefix}_y.npy", "--pca-dims", str(dims), "--iters", str(iters),
                           "--neighbors", neighbors, "--out", str(out)])[-1]
    search = ", exact kNN" if neighbors == "exact" else ""
    row = {"name": f"openTSNE, PCA {dims}, {iters} it{search}", "seconds": report["seconds"], "pca": dims,
           **{k: report[k] for k in SCORES}}
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def dominates(peer, row):
    return peer["knn10"] > row["knn10"] and peer["preservation10"] > row["preservation10"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpora", nargs="+", help="corpus prefixes (PREFIX_X.npy, PREFIX_y.npy)")
    parser.add_argument("--ours", action="append", help="LABEL:FLAGS, one map configuration of ours")
    parser.add_argument("--peer-dims", default="50,100,200")
    parser.add_argument("--peer-iters", default="500,1000")
    parser.add_argument("--peer-neighbors", default="auto", help="auto (openTSNE's Annoy), exact, or auto,exact")
    parser.add_argument("--rerun-peers", action="store_true")
    parser.add_argument("--results", type=pathlib.Path, default=HERE / "results" / "equal-footing")
    parser.add_argument("--bin-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "release")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    for prefix in args.corpora:
        n, width = np.load(f"{prefix}_X.npy", mmap_mode="r").shape
        name = pathlib.Path(prefix).name
        print(f"{name}: {n} x {width}", file=sys.stderr, flush=True)
        kept = args.results / f"{name}.json"
        peers = json.loads(kept.read_text()) if kept.exists() and not args.rerun_peers else {}
        for dims in (int(d) for d in args.peer_dims.split(",") if d):
            for iters in (int(i) for i in args.peer_iters.split(",") if i):
                for neighbors in (n for n in args.peer_neighbors.split(",") if n):
                    key = f"{min(dims, width)}/{iters}" + ("/exact" if neighbors == "exact" else "")
                    if key not in peers:
                        peers[key] = opentsne(args, prefix, min(dims, width), iters, neighbors)
                        kept.write_text(json.dumps(peers, indent=1) + "\n")
        rows = [ours(args, prefix, *entry.split(":", 1)) for entry in (args.ours or ["defaults:"])]
        print(f"\n**{name}** ({n:,} x {width}); seconds, 10-NN labels, 10-NN preservation, global Spearman\n")
        print("| map | PCA | seconds | labels | preservation | global | openTSNE maps better on both |")
        print("|---|---|---|---|---|---|---|")
        for row in rows + sorted(peers.values(), key=lambda r: (r["pca"], r["seconds"])):
            better = [p["name"].removeprefix("openTSNE, ") for p in peers.values() if dominates(p, row)]
            mine = row["name"].startswith("ours")
            print(f"| {row['name']} | {row['pca']} | {row['seconds']:.2f} | {row['knn10']:.4f} | "
                  f"{row['preservation10']:.4f} | {row['global_spearman']:.4f} | "
                  f"{('; '.join(better) or 'none') if mine else ''} |", flush=True)


if __name__ == "__main__":
    main()
