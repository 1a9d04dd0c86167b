"""``python -m studies.experiments --config experiments/demo.yaml``: see studies/experiments/experiment.py."""

from studies.experiments.experiment import main

if __name__ == "__main__":
    raise SystemExit(main())
