"""The merging experiment: python -m soe.merge_experiment (study.py)."""
