"""Benchmarks: every script prints both sides of a comparison and their ratio from the same run."""
