"""The soup itself: the dense model (model.py), Θ(h) = S + Σ α_j(h)·E_j (soup.py, lowrank.py), and the
domain weights h (weights.py). Knows nothing of data, Lightning or files."""
