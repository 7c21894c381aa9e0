#!/usr/bin/env python3
"""Figures for refreshes: a map refreshed from its parent (what the service does when the corpus
changes) against a fresh map of the same new corpus, and against openTSNE's `transform` for the
new points.

    python bench/living_map.py --bin-dir TARGET/release docs10k [pypi60k synth10k ...]

For each corpus in bench/data/ (NAME_X.npy, labels NAME_y.npy when there are some) and each
change (1% and 10% of the rows added, 1% removed; the rows chosen by a fixed seed):
- the parent: a fresh map of the old corpus (`embedding-map-bench --out`);
- the refresh: `embedding-map-bench --parent` on the new corpus, and a fresh map of it, each run
  --repeat times (times are medians; maps are deterministic, so scores do not vary);
- stability: the points both maps share, the new map fitted onto the parent by a similarity
  transform (rotation or reflection, scale, shift: Procrustes); the median distance between a
  point's two places, as a share of the parent map's RMS radius;
- quality on the new corpus: 10-NN label accuracy and 10-NN preservation (as everywhere here);
- the added points' own label accuracy (the majority label of each one's 10 nearest on the map),
  ours beside openTSNE fitted on the old corpus with the seed's settings and then `transform` of
  the new rows (the peer's way of placing new points into a fixed map).
Prints a table per corpus and writes bench/results/living_map_NAME.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers import knn_label_accuracy, l2_normalize  # noqa: E402

CHANGES = [("add 1%", "add", 0.01), ("add 10%", "add", 0.10), ("remove 1%", "remove", 0.01)]
DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results"


def bench(binary, argv):
    """Runs embedding-map-bench; its JSON lines, one per run."""
    done = subprocess.run([str(binary), *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"embedding-map-bench failed: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def median(values):
    return float(np.median(values))


def displacement(parent, new):
    """Median displacement after the best similarity fit of `new` onto `parent`, as a share of
    the parent's RMS radius."""
    a = parent - parent.mean(0)
    b = new - new.mean(0)
    u, s, vt = np.linalg.svd(b.T @ a)
    rotation = u @ vt
    scale = s.sum() / (b**2).sum()
    fitted = scale * b @ rotation
    radius = np.sqrt((a**2).sum(1).mean())
    return float(np.median(np.linalg.norm(fitted - a, axis=1)) / radius)


def own_accuracy(points, labels, rows, k=10):
    """Of `rows`, the share whose 10 nearest map neighbours' majority label is their own."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points[rows], return_distance=False)[:, 1:]
    votes = labels[idx]
    return float(np.mean([np.bincount(row).argmax() == label for row, label in zip(votes, labels[rows])]))


def opentsne_transform(x, labels, old_rows, new_rows):
    """openTSNE on the old rows (the seed's settings: cosine rows, PCA to 50 fitted on the old
    rows, perplexity 30, PCA init), then `transform` of the new rows: their own label accuracy
    among all points, and the seconds `transform` took."""
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    x = l2_normalize(x.astype(np.float32))
    pca = PCA(n_components=min(50, x.shape[1]), random_state=42).fit(x[old_rows])
    old = pca.transform(x[old_rows]).astype(np.float32)
    new = pca.transform(x[new_rows]).astype(np.float32)
    embedding = TSNE(perplexity=30, initialization="pca", random_state=42, n_jobs=2).fit(old)
    started = time.perf_counter()
    placed = np.asarray(embedding.transform(new), dtype=np.float32)
    seconds = time.perf_counter() - started
    points = np.concatenate([np.asarray(embedding, dtype=np.float32), placed])
    all_labels = np.concatenate([labels[old_rows], labels[new_rows]])
    rows = np.arange(len(old_rows), len(points))
    return own_accuracy(points, all_labels, rows), seconds


def run_change(args, name, x, labels, kind, share, work):
    rng = np.random.default_rng(7)
    n = len(x)
    chosen = np.sort(rng.choice(n, max(1, round(share * n)), replace=False))
    rest = np.setdiff1d(np.arange(n), chosen)
    old_rows, new_rows = (rest, np.arange(n)) if kind == "add" else (np.arange(n), rest)
    files = {}
    for side, rows in (("old", old_rows), ("new", new_rows)):
        files[f"{side}_X"] = work / f"{side}_X.npy"
        files[f"{side}_ids"] = work / f"{side}_ids.npy"
        np.save(files[f"{side}_X"], x[rows])
        np.save(files[f"{side}_ids"], rows.astype(np.int64))
    label_args = []
    if labels is not None:
        np.save(work / "new_y.npy", labels[new_rows].astype(np.int64))
        label_args = ["--labels", str(work / "new_y.npy")]
    binary = Path(args.bin_dir) / "embedding-map-bench"
    bench(binary, ["--corpus", str(files["old_X"]), "--ids", str(files["old_ids"]), "--no-preservation",
                   "--out", str(work / "parent.npy")])
    common = ["--corpus", str(files["new_X"]), "--ids", str(files["new_ids"]), "--repeat", str(args.repeat),
              *label_args]
    if args.refresh_iterations:
        common_refresh = ["--refresh-iterations", str(args.refresh_iterations)]
    else:
        common_refresh = []
    refreshed = bench(binary, [*common, *common_refresh, "--parent", str(work / "parent.npy"), "--parent-ids", str(files["old_ids"]),
                               "--out", str(work / "refreshed.npy")])
    fresh = bench(binary, [*common, "--out", str(work / "fresh.npy")])

    parent = np.load(work / "parent.npy")
    maps = {"refreshed": np.load(work / "refreshed.npy"), "fresh": np.load(work / "fresh.npy")}
    # The rows both maps share, in each map's row order.
    shared = np.intersect1d(old_rows, new_rows)
    in_parent = np.searchsorted(old_rows, shared)
    in_new = np.searchsorted(new_rows, shared)
    row = {"corpus": name, "change": f"{kind} {share:.0%}", "n": int(len(new_rows)),
           "layout": refreshed[-1]["layout"]}
    for key, runs in (("refreshed", refreshed), ("fresh", fresh)):
        row[key] = {
            "stability": displacement(parent[in_parent], maps[key][in_new]),
            "knn10": runs[-1].get("knn10"),
            "preservation10": runs[-1].get("preservation10"),
            "seconds": {phase: median([r["seconds"][phase] for r in runs]) for phase in runs[-1]["seconds"]},
            "iterations": runs[-1]["iterations"],
        }
    if kind == "add" and labels is not None:
        added = np.searchsorted(new_rows, chosen)
        row["refreshed"]["added_knn10"] = own_accuracy(maps["refreshed"], labels[new_rows], added)
        row["fresh"]["added_knn10"] = own_accuracy(maps["fresh"], labels[new_rows], added)
    if kind == "add" and labels is not None and not args.no_peer:
        accuracy, seconds = opentsne_transform(x, labels, old_rows, chosen)
        row["opentsne_transform"] = {"added_knn10": accuracy, "seconds": seconds}
    return row


def restart_seconds(args, corpus, runs=3):
    """A service that computed its map and stored it is stopped and started again `runs` times:
    the seconds from the start to the first answered GetEmbeddingMap (an outside client process,
    whose own start is included), and that answer's state."""
    bin_dir = Path(args.bin_dir)

    def start(store):
        service = subprocess.Popen(
            [str(bin_dir / "embedding-service"), "--listen", "127.0.0.1:0", "--map-store", store, "--corpus", corpus],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = service.stdout.readline()
        if "listening on" not in line:
            sys.exit(f"embedding-service did not start: {line!r}")
        return service, line.rsplit(" ", 1)[1].strip()

    def status(address):
        return subprocess.run([str(bin_dir / "embedding-map-client"), "--addr", f"http://{address}", "status"],
                              check=True, capture_output=True, text=True).stdout

    with tempfile.TemporaryDirectory() as store:
        service, address = start(store)
        while not status(address).startswith("READY"):
            time.sleep(0.5)
        service.terminate()
        service.wait()
        seconds, states = [], []
        for _ in range(runs):
            started = time.perf_counter()
            service, address = start(store)
            answer = status(address)
            seconds.append(time.perf_counter() - started)
            states.append(answer.split()[0])
            service.terminate()
            service.wait()
    return median(seconds), states


def fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows):
    lines = [
        "| change | layout | stability: refreshed / fresh | label 10-NN: refreshed / fresh | preservation: refreshed / fresh "
        "| added points' label 10-NN: refreshed / openTSNE transform | to READY: refreshed / fresh (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, fresh = r["refreshed"], r["fresh"]
        transform = r.get("opentsne_transform", {})
        lines.append(
            f"| {r['change']} of {r['n']} | {r['layout']} | {ours['stability']:.2%} / {fresh['stability']:.2%} "
            f"| {fmt(ours['knn10'])} / {fmt(fresh['knn10'])} | {fmt(ours['preservation10'])} / {fmt(fresh['preservation10'])} "
            f"| {fmt(ours.get('added_knn10'))} / {fmt(transform.get('added_knn10'))} "
            f"| {ours['seconds']['total']:.2f} s / {fresh['seconds']['total']:.2f} s "
            f"({ours['seconds']['total'] / fresh['seconds']['total']:.2f}) |"
        )
    phases = ["load", "normalize", "pca", "knn", "affinities", "optimize"]
    lines.append("")
    lines.append("Where the time goes (median seconds, refreshed / fresh): " + "; ".join(
        f"{r['change']}: " + ", ".join(
            f"{p} {r['refreshed']['seconds'][p]:.2f}/{r['fresh']['seconds'][p]:.2f}" for p in phases)
        for r in rows))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpora", nargs="+")
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--refresh-iterations", type=int, help="the service's flag, for the refreshed runs")
    parser.add_argument("--no-peer", action="store_true", help="skip openTSNE's transform (for quick tuning)")
    parser.add_argument("--restart-only", action="store_true",
                        help="only time a restart with a stored map (to the first answer)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for name in args.corpora:
        x = np.load(DATA / f"{name}_X.npy")
        labels_path = DATA / f"{name}_y.npy"
        labels = np.load(labels_path) if labels_path.exists() else None
        seconds, states = restart_seconds(args, str(DATA / f"{name}_X.npy"))
        print(f"{name}: a restart with a stored map answered {states} after {seconds * 1000:.0f} ms (median)",
              flush=True)
        if args.restart_only:
            continue
        rows = []
        for title, kind, share in CHANGES:
            with tempfile.TemporaryDirectory() as work:
                rows.append(run_change(args, name, x, labels, kind, share, Path(work)))
            print(f"{name}: {title} done", file=sys.stderr, flush=True)
        (RESULTS / f"living_map_{name}.json").write_text(json.dumps(rows, indent=1))
        print(f"\n### {name}\n\n{table(rows)}\n", flush=True)


if __name__ == "__main__":
    main()
