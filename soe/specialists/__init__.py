"""From a trained soup to dense specialists: estimate h (estimate.py), refine it (refine.py), evaluate
(evaluate.py), export (export.py), sample (generate.py) and fine-tune (finetune.py) them."""
