"""The soup itself: the dense model (model.py), Θ(h) = S + Σ α_j(h)·E_j (soup.py; its
parts: the router φ, router.py; the bank's product and backward, mix.py; low-rank experts, lowrank.py), and the
domain weights h (weights.py). Knows nothing of data, Lightning or files."""
