"""A dataset folder's format and its storage, below the engine: what a shard, its index and stats,
the manifest and the locks are, and how they are written and read back. Nothing here knows
recipes, models or torch (the engine hands over plain data), so every reader and writer of a
dataset can go through one place; issue 34 moves the folder's code here step by step (encode
first) and then puts one storage interface under it (a local path or an fsspec URL)."""
