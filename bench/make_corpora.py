"""Writes synthetic benchmark corpora with realistic structure: many clusters of uneven size and
spread on the unit sphere, like sentence embeddings, with the cluster as label.

    python bench/make_corpora.py --n 10000 --dims 384 --out bench/data/synth10k
      -> bench/data/synth10k_X.npy (float32 N x dims), bench/data/synth10k_y.npy (int32 labels)

Cluster sizes follow a Zipf-like law; each cluster is a direction plus noise of its own spread,
and a shared low-rank "topic" component makes clusters overlap as real embeddings do.
"""
import argparse
import pathlib

import numpy as np


def make(n, dims, clusters, seed):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    sizes = np.maximum(1, np.round(weights / weights.sum() * n)).astype(int)
    sizes[0] += n - sizes.sum()
    topics = rng.normal(size=(16, dims))
    centers = rng.normal(size=(clusters, 16)) @ topics + rng.normal(scale=0.25, size=(clusters, dims))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    spreads = rng.uniform(3.0, 6.0, size=clusters)
    parts, labels = [], []
    for c, size in enumerate(sizes):
        noise = rng.normal(scale=spreads[c] / np.sqrt(dims), size=(size, dims))
        parts.append(centers[c] + noise)
        labels.append(np.full(size, c))
    x = np.concatenate(parts).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.concatenate(labels).astype(np.int32)
    order = rng.permutation(n)
    return x[order], y[order]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=0, help="default: sqrt(n) / 2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True, help="path prefix; _X.npy and _y.npy are appended")
    args = parser.parse_args()
    clusters = args.clusters or max(2, int(np.sqrt(args.n) / 2))
    x, y = make(args.n, args.dims, clusters, args.seed)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{out}_X.npy", x)
    np.save(f"{out}_y.npy", y)
    print(f"{out}_X.npy: {x.shape[0]} x {x.shape[1]}, {clusters} clusters")


if __name__ == "__main__":
    main()
