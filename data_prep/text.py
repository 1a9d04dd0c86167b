"""Text utilities shared by the corpus builder and the pipeline: chunking, packing, exact dedupe."""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars`` characters, at line boundaries.

    Documents in real corpora are very unequal (a whole play, a whole dictionary), so they are cut
    into chunks of a few KB. A cut prefers a blank line once the chunk is half full; a single line
    longer than ``max_chars`` is cut hard. Pieces are stripped; whitespace-only pieces are dropped.
    """
    if max_chars <= 0:
        raise ValueError(f"chunk size max_chars={max_chars} must be positive")
    if len(text) <= max_chars:
        return [text.strip()] if text.strip() else []
    out, cur, size = [], [], 0

    def flush():
        nonlocal cur, size
        piece = "".join(cur).strip()
        if piece:
            out.append(piece)
        cur, size = [], 0

    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # one huge line: cut hard
            flush()
            head, line = line[:max_chars], line[max_chars:]
            if head.strip():
                out.append(head.strip())
        if size + len(line) > max_chars or (size > max_chars // 2 and not line.strip()):
            flush()
        cur.append(line)
        size += len(line)
    flush()
    return out


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
