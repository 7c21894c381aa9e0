"""Imports the demo corpus's items (digits: name "digit D #ID", category D) into the api-service.

    python3 scripts/seed_demo_items.py http://127.0.0.1:8081 TOKEN

Standard library only: reads embedding-service/data/digits_y.npy (int32) without numpy.
"""
import json
import pathlib
import struct
import sys
import urllib.request

LABELS = pathlib.Path(__file__).resolve().parent.parent / "embedding-service" / "data" / "digits_y.npy"


def read_int32_npy(path):
    data = path.read_bytes()
    assert data[:6] == b"\x93NUMPY", "not a .npy file"
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + header_len].decode("latin1")
    assert "'<i4'" in header, f"expected int32 labels, got {header}"
    body = data[10 + header_len:]
    return list(struct.unpack(f"<{len(body) // 4}i", body))


def main():
    base, token = sys.argv[1], sys.argv[2]
    labels = read_int32_npy(LABELS)
    items = [{"id": i, "name": f"digit {d} #{i}", "category": str(d)} for i, d in enumerate(labels)]
    request = urllib.request.Request(
        f"{base}/api/admin/items/import",
        data=json.dumps({"items": items}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        print("seeded demo items:", response.read().decode())


if __name__ == "__main__":
    main()
