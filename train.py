"""Train a Soup-of-Experts (or a dense baseline) with LightningCLI.

    python train.py fit --config configs/tiny.yaml
    python train.py fit --config configs/tiny.yaml --ckpt_path last     # resume
    python train.py fit --config configs/demo-cpu.yaml --print_config
"""

from soe.train.cli import main

if __name__ == "__main__":
    main()
