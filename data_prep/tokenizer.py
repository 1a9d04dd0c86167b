"""Byte-level BPE trained with `tokenizers` on a balanced sample; <|endoftext|> separates documents."""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def train_bpe(texts_by_group: dict[str, list[str]], vocab_size: int, min_frequency: int, path: Path) -> Tokenizer:
    """Train on the union of the per-group samples (equal caps per group: small domains count as much
    as large ones) and save to ``path`` atomically. Round trip decode(encode(x)) == x is exact: no
    normaliser, byte-level pre-tokeniser without prefix space, byte-level decoder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    groups = list(texts_by_group.values())
    total = sum(map(len, groups))

    def batches():
        for g in groups:
            for i in range(0, len(g), 256):
                yield g[i : i + 256]

    tok.train_from_iterator(batches(), trainer=trainer, length=total)
    tmp = path.with_name(path.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def load_for_sharding(path: Path) -> Tokenizer:
    """The saved tokenizer, set so that '<|endoftext|>' inside a document is encoded as plain text:
    the only EOS ids in a shard are the separators we write."""
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok
