"""Share of a generate run's wall time spent outside the model, on tiny-sd.

Outside the model = planning, the writer's back-pressure and final drain, manifest writes, and
the Python glue between batches: wall time minus (text encoding + denoising + VAE decoding),
model loading excluded. Encoding and tar writing run beside the model (encoder process pool,
writer thread), so they count only where the model waits for them. On a 2-core CPU the encoder
process competes with the model for cores, which shows up as slower denoising rather than as
overhead: the images/sec column is the honest end-to-end figure.

Each configuration runs REPEATS times into fresh folders; the median is reported.

    python bench/overhead.py [--images-per-class 48] [--repeats 3] [--out bench/results]
"""

from __future__ import annotations

import argparse

from record import medians, repeat_generate, write_record

CONFIGS = [  # (label, recipe fields, encoder processes)
    ("default 20 steps, 1 encoder process", {"steps": 20}, 1),
    ("default 20 steps, encoder thread", {"steps": 20}, 0),
    ("4 steps (little model work), 1 encoder process", {"steps": 4}, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-per-class", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    # Imported here, not at the top: encoder processes are spawned and re-import this script, and
    # should start as light as they do under the `t2i-engine` command.
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.engine.run import RunOptions

    results = []
    for label, fields, workers in CONFIGS:
        recipe = build_recipe(
            {
                "model": "tiny-sd",
                "classes": "digits",
                "images_per_class": args.images_per_class,
                "batch_size": 16,
                "images_per_shard": 100,
                **fields,
            }
        )
        runs = repeat_generate(recipe, RunOptions(device="cpu", progress=False, encode_workers=workers), args.repeats)
        results.append(
            {
                "config": label,
                "steps": recipe.steps,
                "resolution": list(recipe.resolution),
                "batch_size": recipe.batch_size,
                "images": runs[0]["images"],
                "encode_workers": workers,
                **medians(runs, ("outside_model_share", "images_per_second", "wall_seconds")),
            }
        )
        print(
            f"{label}: outside the model {100 * results[-1]['outside_model_share_median']:.2f}% of wall time, "
            f"{results[-1]['images_per_second_median']:.1f} images/s"
        )

    write_record("overhead", "tiny-sd (random weights)", results, args.out, "overhead-cpu")


if __name__ == "__main__":
    main()
