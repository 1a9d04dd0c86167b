"""``python -m soe.experiments --config experiments/demo.yaml``: see soe/experiments/experiment.py."""

from soe.experiments.experiment import main

if __name__ == "__main__":
    raise SystemExit(main())
