"""Kept for importers of the former strict front end: `soe.core.weights` itself now parses strictly."""

from soe.core.weights import inline_pairs, parse_weights  # noqa: F401
