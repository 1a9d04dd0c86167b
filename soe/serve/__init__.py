"""``soe serve CKPT``: one soup checkpoint served over HTTP as any number of specialists.

Each request names its specialist (``model``: a domain, ``prior``, a name registered at start-up, or
``soup`` with explicit ``weights``); Θ(h) is instantiated on first use and kept in an LRU cache bounded
in bytes (`cache`); a background engine decodes up to ``--max-batch`` requests per step, those of
different h in one stacked forward where the dense model supports stacked weights (`engine`); the
OpenAI-compatible HTTP layer is FastAPI + uvicorn (`app`), imported only by ``soe serve`` itself so
that ``soe --help`` and the rest of the package work without the ``serve`` extra. docs/serving.md.
"""
