"""Mergeability-aware stopping: choose each fine-tuned model's checkpoint by the *merged* model's validation loss.

Experts fine-tuned long can memorise what merging then forgets ("Less is More", Horoi et al. 2025), and the step
that is best for one expert alone need not be best for the merge. The rule (greedy, one model at a time): start
from each model's individually best checkpoint; for model 1, try each of its checkpoints with the others fixed and
keep the one whose merge has the lowest validation loss; then model 2 with model 1's choice fixed; and so on, one
pass. Cost: Σ_u (checkpoints of u) merges and validations. Used by ``soe finetune --stop-for-merge`` and by the
merging experiment (soe/merge_experiment).
"""

from __future__ import annotations

from typing import Callable, Sequence


def greedy_checkpoints(options: Sequence[Sequence], start: Sequence, value: Callable[[list], float],
                       log: Callable[[str], None] | None = None) -> tuple[list, list[dict]]:
    """(choice, history): ``options[u]`` are model u's checkpoints, ``start[u]`` its individually best one,
    ``value(choice)`` the merged model's validation loss. A model keeps its current checkpoint unless another is
    strictly better."""
    if len(options) != len(start) or any(s not in o for s, o in zip(start, options)):
        raise ValueError("greedy_checkpoints: every model's starting checkpoint must be one of its options")
    choice = list(start)
    best = value(choice)
    history = [{"model": None, "choice": list(choice), "value": best}]
    for u, opts in enumerate(options):
        for o in opts:
            if o == choice[u]:
                continue
            trial = choice[:u] + [o] + choice[u + 1:]
            v = value(trial)
            history.append({"model": u, "choice": list(trial), "value": v})
            if v < best:
                best, choice = v, trial
        if log:
            log(f"  model {u}: checkpoint {choice[u]} (merged validation loss {best:.4f})")
    return choice, history
