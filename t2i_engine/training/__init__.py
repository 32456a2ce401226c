"""Training: the embedded digits model's own training, and small classifiers on shards."""
