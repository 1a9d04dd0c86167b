"""Moved: the studies are ``python -m studies.experiments[.ablate|.search]`` in a checkout (soe/moved.py)."""

from soe.moved import refuse

refuse("soe.experiments", "studies.experiments")
