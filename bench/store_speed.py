"""Images/sec of `generate` writing to a local disk against writing to S3 (issue 34's goal:
within 10%), measured side by side in one run, rounds interleaved.

    python bench/store_speed.py [--images-per-class 50] [--rounds 2] [--out FILE]

S3 is moto's server on 127.0.0.1 (the tests' fixture, here started by the script) reached
through s3fs, so this measures the engine's path to an object store (stage, upload, read back,
leases), not a network. The embedded digits model at its defaults; each run into a fresh
location, the model loaded once per run as `generate` loads it (its load time is reported apart
and left out of images/sec).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import uuid
from datetime import date
from pathlib import Path

import torch

from t2i_engine.engine.recipe import build_recipe
from t2i_engine.engine.run import RunOptions, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    recipe = build_recipe({"model": "digits", "images_per_class": args.images_per_class})
    options = RunOptions(device="cpu", progress=False)
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for where in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                out = Path(tmp) / f"{where}-{r}" if where == "local" else f"s3://{bucket}/run-{r}"
                summary = generate(recipe, out, options)
                rates[where].append(summary["images_per_second"])
                print(f"round {r} {where}: {summary['images_per_second']:.2f} images/s ({summary['images']} images)")
    server.stop()
    local, s3 = statistics.median(rates["local"]), statistics.median(rates["s3"])
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
        "torch": torch.__version__,
        "recipe": {"model": "digits", "images_per_class": args.images_per_class, "images": recipe.num_samples},
        "images_per_second": rates,
        "median_local": local,
        "median_s3": s3,
        "s3_over_local": round(s3 / local, 4),
        "note": __doc__,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "note"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
