"""An LRU cache of instantiated specialists Θ(h), bounded by the bytes of their tensors.

Keys are the exact float32 bytes of the normalised h, so a domain name, a registered name and an explicit
``weights`` object that give the same h share one entry. A miss instantiates (`SoupOfExperts.specialist`:
one matrix-vector product over the bank per parameter group) and inserts the model if it fits, evicting the
least recently used entries; a model larger than the whole budget (or ``--cache-mb 0``) is served uncached.
The budget bounds what the cache *keeps*: a model evicted while requests still decode with it lives until
they finish (they hold a reference), so peak memory is the budget plus the models of in-flight requests.
Used from the engine's one thread only; `stats` may be read from any thread (plain ints).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import torch


def h_key(h: torch.Tensor) -> bytes:
    """The cache key of a normalised h: its float32 bytes."""
    return h.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class SpecialistCache:
    def __init__(self, build: Callable[[torch.Tensor], torch.nn.Module], capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"cache capacity {capacity_bytes} bytes: expected ≥ 0")
        self.build, self.capacity = build, int(capacity_bytes)
        self._entries: OrderedDict[bytes, tuple[torch.nn.Module, int]] = OrderedDict()
        self.bytes = self.hits = self.misses = self.evictions = self.uncached = 0
        self.instantiate_s = 0.0

    def get(self, key: bytes, h: torch.Tensor) -> tuple[torch.nn.Module, bool, float]:
        """(model, was it cached, seconds spent instantiating it now: 0 on a hit)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0], True, 0.0
        t0 = time.perf_counter()
        model = self.build(h)
        p = next(model.parameters())
        if p.is_cuda:
            torch.cuda.synchronize(p.device)
        secs = time.perf_counter() - t0
        self.misses += 1
        self.instantiate_s += secs
        size = model_bytes(model)
        if size > self.capacity:
            self.uncached += 1
            return model, False, secs
        while self.bytes + size > self.capacity:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old
            self.evictions += 1
        self._entries[key] = (model, size)
        self.bytes += size
        return model, False, secs

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        looked = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "capacity_bytes": self.capacity,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "served_uncached": self.uncached,
            "hit_rate": self.hits / looked if looked else None,
            "instantiate_s_total": round(self.instantiate_s, 6),
        }
