#!/usr/bin/env python3
"""Peak memory of both release binaries serving a map of each corpus, for the pod limits.

    python3 bench/measure_memory.py TARGET_DIR [NAME=CORPUS.npy ...]

For each corpus (the bundled demo corpus first): starts the embedding service on it, waits for
READY, starts the api-service with one item per corpus row, asks it for the map once as JSON,
once over gRPC-web, once more as JSON, then prints each process's peak RSS (VmHWM) in MiB;
then streams the whole map's CSV export, read a chunk at a time, and prints how far the
api-service's RSS rose above where it stood before (sampled every 5 ms). Standard library only.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN = "memory-measurement-token-0123"


def start(command, env, labels):
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addresses = {}
    while len(addresses) < len(labels):
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"{command[0]} exited before listening")
        label, _, address = line.strip().partition(" listening on ")
        if label in labels:
            addresses[label] = address
    return process, addresses


def status_mib(process, field):
    """A memory figure of /proc/PID/status (VmHWM: peak RSS, VmRSS: now), in MiB."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib(process):
    return status_mib(process, "VmHWM")


def rss_mib(process):
    return status_mib(process, "VmRSS")


def export_growth(process, url, body, headers):
    """Streams the export at `url`; its size, seconds, and the RSS rise while it ran (MiB)."""
    before = rss_mib(process)
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(process))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started, size = time.time(), 0
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read(1 << 16):
            size += len(chunk)
    seconds = time.time() - started
    done.set()
    sampler.join()
    return size, seconds, peak[0] - before


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.status, response.read()


def measure(target, name, corpus):
    rows = 1797
    args = []
    if corpus:
        with open(corpus, "rb") as f:
            header = f.read(256).decode("latin1")
        rows = int(header.split("'shape': (")[1].split(",")[0])
        args = ["--corpus", corpus]
    embedding, addresses = start([f"{target}/embedding-service", "--listen", "127.0.0.1:0", "--map-store", "", *args], {}, ["embedding-service"])
    url = f"http://{addresses['embedding-service']}"
    started = time.time()
    while True:
        status = subprocess.run([f"{target}/embedding-map-client", "--addr", url, "status"], capture_output=True, text=True).stdout
        if status.startswith("READY"):
            break
        if status.startswith("FAILED") or time.time() - started > 900:
            raise SystemExit(f"{name}: {status}")
        time.sleep(0.5)
    with tempfile.TemporaryDirectory() as data:
        api, api_addresses = start(
            [f"{target}/api-service", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             "--database", f"{data}/api.sqlite3", "--embedding-url", url, "--embedding-timeout", "60s"],
            {"API_ADMIN_TOKEN": TOKEN}, ["api-service grpc", "api-service http"])
        base = f"http://{api_addresses['api-service http']}"
        auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
        for start_id in range(0, rows, 10_000):
            items = [{"id": i, "name": f"item {i}", "category": str(i % 40)} for i in range(start_id, min(rows, start_id + 10_000))]
            http("POST", f"{base}/api/admin/items/import", json.dumps({"items": items}).encode(), auth)
        status, body = http("GET", f"{base}/api/admin/embedding-map", headers=auth)
        assert status == 200, status
        frame = b"\x00\x00\x00\x00\x00"
        http("POST", f"{base}/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap", frame,
             {"authorization": f"Bearer {TOKEN}", "content-type": "application/grpc-web+proto"})
        http("GET", f"{base}/api/admin/embedding-map", headers=auth)
        generation = json.loads(body)["generation"]
        size, seconds, growth = export_growth(api, f"{base}/api/admin/embedding-map/export",
                                              json.dumps({"generation": generation}).encode(), auth)
        result = (name, rows, peak_mib(embedding), peak_mib(api), len(body) / 2**20, size / 2**20, seconds, growth)
        api.terminate(); api.wait()
    embedding.terminate(); embedding.wait()
    return result


def main():
    target = sys.argv[1]
    corpora = [("digits (demo)", None)] + [tuple(arg.split("=", 1)) for arg in sys.argv[2:]]
    print("| corpus | points | embedding-service peak RSS | api-service peak RSS | map JSON | CSV export | export time | api RSS rise during export |")
    print("|---|---|---|---|---|---|---|---|")
    for name, corpus in corpora:
        name, rows, embedding, api, json_mib, csv_mib, seconds, growth = measure(target, name, corpus)
        print(f"| {name} | {rows:,} | {embedding:.0f} MiB | {api:.0f} MiB | {json_mib:.1f} MiB | {csv_mib:.1f} MiB | {seconds:.2f} s | {growth:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
