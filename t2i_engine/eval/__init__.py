"""Evaluation: how good generated datasets are as training data."""
