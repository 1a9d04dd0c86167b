"""Measured comparisons: generic vs SoE vs dedicated models (experiment.py, its training runs in runs.py),
recipe ablations (ablate.py), and their reports (report.py). ``python -m studies.experiments`` runs one."""
