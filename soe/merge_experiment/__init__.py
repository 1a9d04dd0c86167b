"""Moved: the merging study is ``python -m studies.merging`` in a checkout (soe/moved.py)."""

from soe.moved import refuse

refuse("soe.merge_experiment", "studies.merging")
