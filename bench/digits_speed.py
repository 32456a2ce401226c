"""Images/sec of the embedded `digits` model on this machine's CPU, end to end.

The whole `generate` path (plan, cached text embeddings, 15 DDIM steps with guidance 2.0, VAE
decode, JPEG encoding, shard writing): 100 images per digit = 1,000 images, model loading
excluded, at batch 16 (the paper's) and at batch 100 (the model's default). The goal of issue 3: 1,000 images in
under 60 seconds on 2 CPU cores. Median of REPEATS runs into fresh folders.

    python bench/digits_speed.py [--repeats 3] [--out bench/results]
"""

from __future__ import annotations

import argparse

from record import medians, repeat_generate, write_record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    # Heavy imports inside main(): spawned encoder processes re-import this script.
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.engine.run import RunOptions

    results = []
    for batch in (16, 100):
        recipe = build_recipe({"images_per_class": 100, "batch_size": batch})
        runs = repeat_generate(recipe, RunOptions(device="cpu", progress=False), args.repeats)
        results.append(
            {
                "batch_size": batch,
                "images": runs[0]["images"],
                "steps": recipe.steps,
                "guidance": recipe.guidance,
                "resolution": list(recipe.resolution),
                "format": recipe.format,
                **medians(runs, ("wall_seconds", "images_per_second", "model_load_seconds")),
            }
        )
        print(
            f"batch {batch}: 1000 images in {results[-1]['wall_seconds_median']:.1f} s "
            f"({results[-1]['images_per_second_median']:.1f} images/s)"
        )

    write_record("digits_speed", "digits (embedded, trained weights)", results, args.out, "digits-speed-cpu")


if __name__ == "__main__":
    main()
