"""Evaluation: metrics (avg@k, unbiased pass@k, maj@k) and benchmark runs."""
