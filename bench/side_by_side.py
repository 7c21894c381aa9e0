#!/usr/bin/env python3
"""Side-by-side runner: this project's map pipeline against openTSNE and scikit-learn on one corpus.

    python bench/side_by_side.py X.npy --labels y.npy [--repeat 3] [--peers opentsne,sklearn]

For the corpus it runs, each --repeat times:
  - `embedding-map-bench` (the service's pipeline in process): phase times, total, peak RSS, 10-NN
    label accuracy (with labels) and 10-NN preservation, and (untimed) the share of the exact
    nearest neighbours its neighbour search found;
  - the real `embedding-service` binary, timing boot until a GetEmbeddingMap is answered;
  - `bench/peers.py run PEER` for each peer (same prepared input, perplexity 30, PCA init, 2 jobs,
    1000 iterations with 250 exaggerated): fit seconds, the child's peak RSS, 10-NN accuracy and
    preservation, scored as ours are.
Then it prints one table of medians (with the min-max spread of the runs, the machine's noise) and
each peer's time divided by ours. --json writes the same figures for the record.

Binaries come from --bin-dir (default $CARGO_TARGET_DIR/release); the peers run with --python
(a venv holding bench/requirements.txt; scripts/side-by-side.sh sets one up).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
PHASES = ["load", "normalize", "pca", "knn", "affinities", "optimize"]


def median_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def run_child(argv):
    """Runs argv to completion, its stderr passed through; returns (stdout, peak RSS in MB of that
    child alone)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    # communicate() would reap the child itself; read stdout, then reap with wait4 for rusage.
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{argv[0]} {argv[1]} failed with exit code {code}")
    return out, usage.ru_maxrss / 1024


# Preservation needs an exact search of the full input, N squared: minutes above this.
PRESERVATION_MAX_ROWS = 100_000


def rows_of(path):
    import numpy as np

    return np.load(path, mmap_mode="r").shape[0]


def ours(args):
    bench = [str(args.bin_dir / "embedding-map-bench"), "--corpus", args.corpus] + args.map_flag
    if rows_of(args.corpus) > PRESERVATION_MAX_ROWS:
        bench.append("--no-preservation")
    out, _ = run_child(bench + ["--repeat", str(args.repeat)] + (["--labels", args.labels] if args.labels else []))
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # Recall needs an exact search; a separate one-iteration run keeps it out of the peak RSS.
    recall_run = ["--recall", "--no-preservation", "--iterations", "1", "--exaggeration-iterations", "1"]
    out, _ = run_child(bench + [flag for flag in recall_run if flag not in bench])
    recall = json.loads(out.splitlines()[-1])["knn_recall"]
    row = {"name": "embedding-service", "runs": runs}
    for phase in PHASES + ["total"]:
        row[phase] = median_spread([r["seconds"][phase] for r in runs])
    row["rss"] = median_spread([r["peak_rss_mb"] for r in runs])
    row["knn10"] = median_spread([r["knn10"] for r in runs])
    row["preservation10"] = median_spread([r.get("preservation10") for r in runs])
    row["schedule"] = (
        f'{runs[0]["knn"]} kNN (recall {recall:.2f}), {runs[0]["gradient"]}, {runs[0]["iterations"]} it'
    )
    return row


def boot_seconds(args):
    """Seconds from starting the service binary until a GetEmbeddingMap call returns."""
    started = time.perf_counter()
    service = subprocess.Popen(
        [str(args.bin_dir / "embedding-service"), "--listen", "127.0.0.1:0", "--map-store", "", "--corpus", args.corpus],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = service.stdout.readline()
        if "listening on" not in line:
            sys.exit(f"embedding-service did not start: {line!r}")
        address = line.rsplit(" ", 1)[1].strip()
        subprocess.run(
            [str(args.bin_dir / "embedding-map-client"), "--addr", f"http://{address}", "status"],
            check=True, stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started
    finally:
        service.terminate()
        service.wait()


def peer(args, name):
    runs = []
    for _ in range(args.peer_repeat):
        argv = [args.python, str(HERE / "peers.py"), "run", name, args.corpus]
        if args.labels:
            argv += ["--labels", args.labels]
        out, rss = run_child(argv)
        report = json.loads(out.strip().splitlines()[-1])
        # The peak before scoring, as ours is read; the child's whole peak only if it has none.
        report.setdefault("peak_rss_mb", rss)
        print(f"{name}: {report}", file=sys.stderr)
        runs.append(report)
    return {
        "name": name,
        "runs": runs,
        "total": median_spread([r["seconds"] for r in runs]),
        "rss": median_spread([r["peak_rss_mb"] for r in runs]),
        "knn10": median_spread([r.get("knn10") for r in runs]),
        "preservation10": median_spread([r.get("preservation10") for r in runs]),
        "schedule": "1000 it (250 exaggerated)",
    }


def fmt(cell, digits=2):
    med, low, high = cell if cell else (None, None, None)
    if med is None:
        return "-"
    text = f"{med:.{digits}f}"
    if high is not None and high - low >= 10 ** -digits:
        text += f" [{low:.{digits}f}-{high:.{digits}f}]"
    return text


def table(corpus, n_runs, rows, boot):
    base = rows[0]["total"][0]
    lines = [
        f"corpus {corpus}: medians of {n_runs} run(s), [min-max] where runs differ; seconds unless named",
        "| implementation | " + " | ".join(PHASES) + " | total | peak RSS MB | 10-NN labels | 10-NN preservation | peer time / ours | schedule |",
        "|" + "---|" * (len(PHASES) + 7),
    ]
    for row in rows:
        ratio = "-" if row is rows[0] else f"{row['total'][0] / base:.1f}x"
        phases = [fmt(row.get(p), 3) for p in PHASES]
        lines.append(
            f"| {row['name']} | " + " | ".join(phases)
            + f" | {fmt(row['total'])} | {fmt(row['rss'], 0)} | {fmt(row['knn10'], 4)} | {fmt(row['preservation10'], 4)} | {ratio} | {row['schedule']} |"
        )
    if boot:
        lines.append(f"boot to first answered GetEmbeddingMap: median {fmt(boot, 3)} s")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="float32 .npy matrix")
    parser.add_argument("--labels", help="integer .npy labels, one per row")
    parser.add_argument("--repeat", type=int, default=3, help="runs of this project's pipeline")
    parser.add_argument("--peers", default="opentsne,sklearn", help="comma-separated; empty for none")
    parser.add_argument("--peer-repeat", type=int, default=1, help="runs of each peer")
    parser.add_argument("--python", default=sys.executable, help="interpreter with openTSNE and scikit-learn")
    parser.add_argument(
        "--bin-dir", type=pathlib.Path,
        default=pathlib.Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent / "target")) / "release",
    )
    parser.add_argument("--map-flag", action="append", default=[], help="extra flag for the pipeline (repeatable)")
    parser.add_argument("--no-boot", action="store_true", help="skip the boot-time measurement")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = parser.parse_args()

    rows = [ours(args)]
    boot = None if args.no_boot else median_spread([boot_seconds(args) for _ in range(args.repeat)])
    rows += [peer(args, name) for name in filter(None, args.peers.split(","))]
    print(table(args.corpus, args.repeat, rows, boot))
    if args.json:
        args.json.write_text(json.dumps({"corpus": args.corpus, "boot": boot, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
