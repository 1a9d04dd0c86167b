"""The teams of the merging experiment: their data splits, their estimated h, and the marker facts planted in them.

A team is one specialist set of the prepared data (``<data_dir>/specialists/<team>``):
- its in-house tokens (``train`` shard) are split at 1 − validation_share into a **fine-tune part** and a
  **validation part** (the tail); every choice the experiment makes (checkpoints, grid points, bases, methods)
  reads only validation parts;
- its ``val`` shard is the **evaluation split**, read only by `evaluation_windows`, after every choice is made
  (tests/test_merge_experiment.py checks the order);
- its h is estimated from its in-house sample (``inhouse.jsonl``) like ``soe estimate-weights`` does.

Markers (the sequential-vs-parallel study): short facts "The keeper of <Name> is number <NNNN>." drawn per seed,
planted ``marker_copies`` times each into the fine-tune part only, overwriting text inside fine-tuning windows
so that every copy is seen whole. *Specific* markers are planted in one team's part, *shared* ones in every
team's. A model's knowledge of a marker is its loss on the answer tokens given ``<eos> prompt`` (and recall:
every answer token is the model's top choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from soe.core.model import LlamaLM
from soe.data.shards import load_meta, open_shard
from soe.data.windows import eval_windows

SYLLABLES = ["ka", "zor", "vel", "mi", "tha", "qua", "rin", "bo", "sel", "dra", "ny", "lo", "pex", "ur", "gim", "fe"]


@dataclass
class Marker:
    kind: str
    """'specific' or 'shared'."""
    team: str | None
    """The team whose data holds a specific marker (None: shared)."""
    text: str
    prompt: list[int]
    answer: list[int]


@dataclass
class Team:
    name: str
    h: torch.Tensor
    """Estimated domain weights (k,)."""
    finetune: np.ndarray
    """Fine-tune part of the in-house tokens, markers planted (int64)."""
    validation: np.ndarray
    """Validation part (the tail; no markers)."""

    @property
    def stream(self) -> np.ndarray:
        """Fine-tune part then validation part: `finetune(..., holdout=holdout)` holds out exactly the latter."""
        return np.concatenate([self.finetune, self.validation])

    @property
    def holdout(self) -> float:
        return len(self.validation) / (len(self.finetune) + len(self.validation))


def split_tokens(tokens: np.ndarray, validation_share: float) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tune part, validation part) at the cut `finetune` uses for this stream and holdout."""
    cut = int(len(tokens) * (1 - validation_share))
    return tokens[:cut], tokens[cut:]


def make_markers(teams: list[str], n_specific: int, n_shared: int, seed: int, tokenizer_file: str) -> list[Marker]:
    """Seeded marker facts: n_specific per team, then n_shared for everyone (distinct names)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    rng = np.random.default_rng(10_000 + seed)
    names: set[str] = set()
    out = []
    for kind, team in [("specific", t) for t in teams for _ in range(n_specific)] + [("shared", None)] * n_shared:
        while True:
            name = "".join(rng.choice(SYLLABLES, 3)).capitalize()
            if name not in names:
                names.add(name)
                break
        prompt, answer = f"The keeper of {name} is number", f" {int(rng.integers(1000, 10000))}."
        out.append(Marker(kind, team, prompt + answer, tok.encode(prompt).ids, tok.encode(answer).ids))
    return out


def plant(tokens: np.ndarray, markers: list[Marker], copies: int, seq_len: int, eos_id: int, seed: int) -> np.ndarray:
    """A copy of ``tokens`` with each marker written ``copies`` times, each copy inside its own fine-tuning
    window (windows of seq_len + 1 tokens at stride seq_len, as `eval_windows` cuts them)."""
    out = tokens.copy()
    n_win = (len(tokens) - 1) // seq_len
    need = copies * len(markers)
    if need > n_win:
        raise ValueError(
            f"{need} marker copies ({len(markers)} markers × {copies}) need as many fine-tuning windows; "
            f"the fine-tune part has {n_win}: lower marker_copies"
        )
    rng = np.random.default_rng(20_000 + seed)
    wins = rng.choice(n_win, size=need, replace=False)
    for i, m in enumerate([m for m in markers for _ in range(copies)]):
        ids = [eos_id] + m.prompt + m.answer + [eos_id]
        if len(ids) > seq_len + 1:
            raise ValueError(f"marker {m.text!r} is {len(ids)} tokens, longer than a window of {seq_len + 1}")
        at = wins[i] * seq_len + int(rng.integers(0, seq_len + 2 - len(ids)))
        out[at : at + len(ids)] = ids
    return out


def load_teams(
    data_dir,
    names: list[str],
    hs: dict[str, torch.Tensor],
    validation_share: float,
    markers: list[Marker],
    copies: int,
    seq_len: int,
    eos_id: int,
    seed: int,
) -> dict[str, Team]:
    spec = f"{data_dir}/specialists"
    meta = load_meta(spec)
    teams = {}
    for u, name in enumerate(names):
        ft, val = split_tokens(np.asarray(open_shard(spec, meta, name, "train"), dtype=np.int64), validation_share)
        mine = [m for m in markers if m.team in (name, None)]
        teams[name] = Team(name, hs[name], plant(ft, mine, copies, seq_len, eos_id, seed * 1000 + u), val)
    return teams


def evaluation_windows(data_dir, name: str, seq_len: int, max_windows: int) -> torch.Tensor:
    """The team's evaluation split: read only once every choice has been made (module docstring)."""
    spec = f"{data_dir}/specialists"
    return eval_windows(open_shard(spec, load_meta(spec), name, "val"), seq_len, max_windows)


def _answer_nll(net: LlamaLM, pairs: list[tuple[list[int], list[int]]], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean NLL of the answer tokens, 1.0 if every answer token is the argmax) of each (prompt, answer) after
    <eos>. One right-padded batch (causal attention: padding never reaches earlier positions)."""
    seqs = [[eos_id] + p + a for p, a in pairs]
    x = torch.full((len(seqs), max(map(len, seqs))), eos_id, dtype=torch.long)
    for i, sq in enumerate(seqs):
        x[i, : len(sq)] = torch.tensor(sq)
    net.eval()
    logp = F.log_softmax(net(x[:, :-1]).float(), dim=-1)  # (B, W-1, V): position p predicts token p+1
    nll, hit = np.zeros(len(pairs)), np.zeros(len(pairs))
    for i, (p, a) in enumerate(pairs):
        pos, tgt = torch.arange(len(p), len(p) + len(a)), torch.tensor(a)  # answer tokens follow <eos> + prompt
        nll[i] = float(-logp[i, pos, tgt].mean())
        hit[i] = float((logp[i, pos].argmax(-1) == tgt).all())
    return nll, hit


@torch.no_grad()
def marker_scores(net: LlamaLM, markers: list[Marker], eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, recall, fact) per marker. loss: NLL of the answer given <eos> + prompt — it falls as soon as the
    model learns the *template* (a 4-digit number after "is number"), whatever the fact. fact: loss minus the mean
    loss of the other markers' answers after the same prompt — it falls only when the model prefers this fact's
    own answer, so it measures the fact."""
    if not markers:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    loss, recall = _answer_nll(net, [(m.prompt, m.answer) for m in markers], eos_id)
    others = [(i, j) for i in range(len(markers)) for j in range(len(markers)) if i != j]
    if not others:
        return loss, recall, np.zeros(len(markers))
    cross, _ = _answer_nll(net, [(markers[i].prompt, markers[j].answer) for i, j in others], eos_id)
    alt = np.zeros(len(markers))
    for (i, _), v in zip(others, cross):
        alt[i] += v / (len(markers) - 1)
    return loss, recall, loss - alt
