"""Training with Lightning: the module (module.py), its optimizer (optim.py), checkpoints written
(callbacks.py) and read back (checkpoint.py), the checks of a resume (resume.py), and the LightningCLI
behind train.py (cli.py)."""
