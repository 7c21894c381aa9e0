#!/usr/bin/env python3
"""openTSNE's approximate neighbour graph against the exact one, on the same input.

    python bench/neighbour_graphs.py bench/data/npmfam10k [bench/data/code10k ...] [--pca-dims 200]

For each corpus (PREFIX_X.npy, PREFIX_y.npy), prepared as bench/peers.py prepares it for the peers
(rows L2-normalised, PCA to --pca-dims), the 90 nearest neighbours of every row (perplexity 30's
k) by openTSNE's Annoy search (its default from 1,000 points: 50 trees, seed 42) and by an exact
search. Prints one JSON line per corpus: Annoy's recall of the exact lists; the share of
neighbours with the row's own label in each graph; and that share among the exact neighbours
Annoy misses and among the points it returns in their place. Where the last two differ, the
approximate search changes which clusters a point is tied to, and with them the map's label score.
"""
import argparse
import json
import pathlib

import numpy as np

from peers import prepare

K = 90


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpora", nargs="+", help="corpus prefixes (PREFIX_X.npy, PREFIX_y.npy)")
    parser.add_argument("--pca-dims", type=int, default=200)
    args = parser.parse_args()
    from openTSNE import nearest_neighbors

    for prefix in args.corpora:
        x = prepare(np.load(f"{prefix}_X.npy"), args.pca_dims).astype(np.float64)
        y = np.load(f"{prefix}_y.npy")
        annoy, _ = nearest_neighbors.Annoy(x, K, metric="euclidean", n_jobs=2, random_state=42).build()
        exact, _ = nearest_neighbors.Sklearn(x, K, metric="euclidean", n_jobs=2).build()
        missed = [np.setdiff1d(e, a) for a, e in zip(annoy, exact)]
        instead = [np.setdiff1d(a, e) for a, e in zip(annoy, exact)]

        def same_label(lists):
            return round(float(np.mean(np.concatenate([y[rows] == y[i] for i, rows in enumerate(lists)]))), 4)

        print(json.dumps({
            "corpus": pathlib.Path(prefix).name, "n": len(x), "pca": x.shape[1],
            "annoy_recall": round(float(np.mean([len(np.intersect1d(a, e)) for a, e in zip(annoy, exact)]) / K), 4),
            "same_label_annoy": same_label(annoy), "same_label_exact": same_label(exact),
            "same_label_missed": same_label(missed), "same_label_instead": same_label(instead),
        }), flush=True)


if __name__ == "__main__":
    main()
