"""The Python API: ``soe.load`` and the handles it returns (they live in soe/specialists/load.py).

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    spec = soup.specialist(soup.estimate_weights("inhouse.jsonl").weights)
    spec.save("out/my-specialist")

A `Soup` is a trained checkpoint with its prepared data; a `Specialist` is one dense model with its tokenizer.
"""

from soe.specialists.load import Soup, Specialist, fetch_checkpoint, load

__all__ = ["Soup", "Specialist", "fetch_checkpoint", "load"]
