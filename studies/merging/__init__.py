"""The merging experiment: python -m studies.merging (study.py)."""
