"""The names a request's ``model`` may take, and the h each stands for.

- a domain name of the checkpoint: its one-hot h;
- ``prior``: the checkpoint's prior (the token-count mixture of pretraining);
- a name registered at start-up (``--specialist name=weights.json``, or any form `parse_weights` accepts);
- ``soup``, with the request's extra ``weights: {domain: weight}`` field: any other h (missing domains are 0;
  normalised to sum 1, validated by `soe.core.weights.check_h`).

A dense checkpoint (n = 0 experts) is one model whatever h: it accepts ``prior`` only.
"""

from __future__ import annotations

import torch

from soe.core.weights import parse_weights, weights_dict  # strict: a domain twice, '1_0': refused
from soe.serve.cache import h_key
from soe.serve.protocol import ApiError, bad

SOUP = "soup"


class Catalog:
    def __init__(
        self, domains: list[str], prior: torch.Tensor, dense: bool = False, registered: dict[str, str] | None = None
    ):
        self.domains, self.dense = list(domains), dense
        self.prior = parse_weights("prior", self.domains, prior)
        self.named: dict[str, tuple[str, torch.Tensor]] = {"prior": ("prior", self.prior)}
        if not dense:
            for i, d in enumerate(self.domains):
                self.named[d] = ("domain", torch.nn.functional.one_hot(torch.tensor(i), len(domains)).float())
        for name, spec in (registered or {}).items():
            if not name or name in self.named or name == SOUP:
                raise ValueError(
                    f"--specialist {name}={spec}: the name {name!r} is empty or already taken "
                    f"(the names {SOUP!r}, 'prior' and the domains {self.domains} are reserved)"
                )
            if dense:
                raise ValueError(
                    f"--specialist {name}={spec}: a dense checkpoint (n = 0 experts) serves one "
                    "model whatever h; registered specialists need a soup"
                )
            self.named[name] = ("registered", parse_weights(spec, self.domains))

    def models(self) -> list[dict]:
        """The entries of ``GET /v1/models``."""
        out = [
            {"id": name, "kind": kind, "weights": None if self.dense else weights_dict(h, self.domains)}
            for name, (kind, h) in self.named.items()
        ]
        if not self.dense:
            out.append(
                {
                    "id": SOUP,
                    "kind": "soup",
                    "weights": None,
                    "description": "any domain weights h: pass them in the request's 'weights' field",
                }
            )
        return out

    def resolve(self, model: str, weights: dict | None) -> tuple[torch.Tensor, bytes]:
        """(normalised h, cache key) for a request; ApiError naming ``model`` or ``weights``."""
        if weights is not None:
            if model != SOUP:
                raise bad(
                    "weights",
                    f"explicit weights go with model {SOUP!r} (got model {model!r}, which names its own h)",
                    "conflicting_parameters",
                )
            if self.dense:
                raise bad(
                    "weights",
                    "this is a dense checkpoint (n = 0 experts): its model does not depend on h; use model 'prior'",
                    "unsupported_value",
                )
            if not weights:
                raise bad("weights", "empty: expected {domain: weight} with a positive total")
            try:
                h = parse_weights(weights, self.domains)
            except (ValueError, TypeError, OverflowError) as e:  # OverflowError: an integer beyond float's range
                msg = (
                    str(e).removeprefix("weights: ") if isinstance(e, ValueError) else f"{e} (expected finite numbers)"
                )
                raise bad("weights", msg) from None
            return h, h_key(h)
        if model == SOUP and not self.dense:
            raise bad(
                "weights",
                f"model {SOUP!r} needs the 'weights' field ({{domain: weight}}; with the openai "
                "client: extra_body={'weights': {...}})",
                "missing",
            )
        if model not in self.named:
            raise ApiError(
                404,
                f"model: {model!r} is not served here; accepted: {', '.join(self.names())}",
                "model",
                "model_not_found",
            )
        h = self.named[model][1]
        return h, h_key(h)

    def names(self) -> list[str]:
        return list(self.named) + ([] if self.dense else [SOUP])
