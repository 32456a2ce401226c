"""`t2i-engine bench`: images/sec and model-FLOP utilisation, with baselines in the same run."""
