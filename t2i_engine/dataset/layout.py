"""The names of a dataset folder's files (the shards' own: shards.shard_files)."""

from __future__ import annotations

import re

MANIFEST = "dataset.json"
INFO = "_info.json"
LOCK = ".t2i-engine.lock"
CARD = "README.md"  # the dataset card (engine/card.py writes it)
PREVIEW = "preview.jpg"  # the contact sheet (preview.py)
REJECTED = "_rejected"  # where verify --repair moves bad shards
SCORES = "scores.json"  # the scores manifest (scores.py); each shard's scores in NNNNNN.scores.parquet
LOG_DIR = ".t2i-engine-log"  # the run log: each writer's JSON lines (runlog.py), read by `status`
SHARD_FILE = re.compile(r"[0-9]{6,}\.")  # NNNNNN.tar, NNNNNN.index.jsonl, NNNNNN.stats.json, NNNNNN.scores.parquet
