"""Measured comparisons: generic vs SoE vs dedicated models (experiment.py, its training runs in runs.py, its
budget curve in curve.py), recipe ablations (ablate.py), the recipe search on validation targets (search.py,
scored by targets.py), and their reports (report.py). ``python -m studies.experiments`` runs one."""
