"""Images/sec of `generate` writing to a local disk, to S3 and to GCS (issue 34's goal: within
10% of local disk), measured side by side in one run, rounds interleaved.

    python bench/store_speed.py [--images-per-class 50] [--images-per-shard 50] [--rounds 2]
                                [--stores local,s3,gcs] [--out FILE]

S3 is moto's server and GCS gcp-storage-emulator's (in memory), both on 127.0.0.1, each started
by the script in a process of its own, reached through s3fs and gcsfs: this measures the engine's path to an object
store (stage, upload, read back, leases, the run log's object per shard), not a network. The
embedded digits model at its defaults; each run into a fresh location, the model loaded once per
run as `generate` loads it (its load time is reported apart and left out of images/sec).
"""

from __future__ import annotations

import os

# gcsfs's hierarchical-namespace probe needs an API the emulator lacks; read when gcsfs is imported
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from t2i_engine.engine.recipe import build_recipe  # noqa: E402
from t2i_engine.engine.run import RunOptions, generate  # noqa: E402

STORES = ("local", "s3", "gcs")


def _server(args: list[str]) -> tuple[str, subprocess.Popen]:
    """A store's test server in a process of its own (in this one it would share the GIL with the
    generation it is measured beside): (its endpoint, the process), once it accepts connections."""
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # their request logs
    proc = subprocess.Popen([sys.executable, "-m", *args, str(port)], **quiet)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return f"http://127.0.0.1:{port}", proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start on port {port}")


def start_s3() -> tuple[str, subprocess.Popen]:
    """moto's S3 server, the environment pointing s3fs at it, and a new bucket: (its URL, the server)."""
    import fsspec

    endpoint, proc = _server(["moto.server", "-H", "127.0.0.1", "-p"])
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}", proc


def start_gcs() -> tuple[str, subprocess.Popen]:
    """gcp-storage-emulator in memory, gcsfs pointed at it (no credentials), and a new bucket."""
    import fsspec.config

    endpoint, proc = _server(["gcp_storage_emulator", "start", "--in-memory", "-q", "-H", "127.0.0.1", "--port"])
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    fsspec.config.conf["gcs"] = {"token": "anon", "project": "bench"}
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("gs").mkdir(bucket)
    return f"gs://{bucket}", proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--images-per-shard", type=int, default=50, help="50: ten shards, each its own uploads")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stores", default="local,s3,gcs", help=f"comma-separated, of {', '.join(STORES)}")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stores = args.stores.split(",")
    if "local" not in stores or not set(stores) <= set(STORES):
        ap.error(f"--stores: {args.stores!r}: expected 'local' and any of s3, gcs")

    roots, servers = {}, []
    for name, start in (("s3", start_s3), ("gcs", start_gcs)):
        if name in stores:
            roots[name], server = start()
            servers.append(server)
    recipe = build_recipe(
        {"model": "digits", "images_per_class": args.images_per_class, "images_per_shard": args.images_per_shard}
    )
    options = RunOptions(device="cpu", progress=False)
    rates: dict[str, list[float]] = {s: [] for s in stores}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for where in stores[r % len(stores) :] + stores[: r % len(stores)]:  # each store first in turn
                out = Path(tmp) / f"{where}-{r}" if where == "local" else f"{roots[where]}/run-{r}"
                summary = generate(recipe, out, options)
                rates[where].append(summary["images_per_second"])
                print(f"round {r} {where}: {summary['images_per_second']:.2f} images/s ({summary['images']} images)")
    for server in servers:
        server.terminate()
    medians = {s: statistics.median(v) for s, v in rates.items()}
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
        "torch": torch.__version__,
        "recipe": {
            "model": "digits",
            "images_per_class": args.images_per_class,
            "images_per_shard": args.images_per_shard,
            "images": recipe.num_samples,
        },
        "images_per_second": rates,
        "median": medians,
        "over_local": {s: round(medians[s] / medians["local"], 4) for s in stores if s != "local"},
        "note": __doc__,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "note"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
