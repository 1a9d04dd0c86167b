"""Text utilities of the corpus builder and the pipeline: packing tiny documents, exact dedupe.

(Chunking is `soe.data.text.chunk_text`: specialist estimation must cut text exactly as preparation does.)
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator


def pack(docs: Iterable[str], max_chars: int, sep: str = "\n\n") -> Iterator[str]:
    """Group many tiny documents (dictionary entries, glosses) into documents of about ``max_chars``."""
    cur, size = [], 0
    for d in docs:
        if cur and size + len(d) + len(sep) > max_chars:
            yield sep.join(cur)
            cur, size = [], 0
        cur.append(d)
        size += len(d) + len(sep)
    if cur:
        yield sep.join(cur)


class Deduper:
    """Exact-repeat filter: remembers an 8-byte BLAKE2b digest per text (~70 bytes of RAM each in a set)."""

    def __init__(self):
        self.seen: set[bytes] = set()
        self.dropped = 0

    def is_new(self, text: str) -> bool:
        h = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
        if h in self.seen:
            self.dropped += 1
            return False
        self.seen.add(h)
        return True
