"""From a trained soup to dense specialists: estimate h (estimate.py), refine it (refine.py: Adam; refine_bfgs.py;
refinement.py, what both share), evaluate (evaluate.py), export (export.py; atomic.py, the overwrite-safe output
directories every writer uses), sample (generate.py) and fine-tune (finetune.py) them."""
