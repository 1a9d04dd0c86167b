"""The lab: studies built on the ``soe`` library, run from a checkout and never installed with it.

    studies.experiments   generic vs SoE vs dedicated comparisons (python -m studies.experiments), recipe
                          ablations (.ablate), validation-target searches (.search), reports and plots
    studies.merging       the merging study (python -m studies.merging): teams, fine-tunes, grids, report

Their configs and result reports are in experiments/ (YAML, RECIPE.md, MERGING.md). ``soe`` never imports them
(tests/test_structure.py).
"""
