"""The studies' old entry points, which moved out of the installed package (issue 28).

``python -m soe.experiments[.ablate|.search]`` and ``python -m soe.merge_experiment`` are now
``python -m studies.experiments[.ablate|.search]`` and ``python -m studies.merging``: the studies live in the
repository's ``studies/`` folder, which ``pip install`` does not install. What is left under the old names is a
package of one ``__init__.py`` each that calls `refuse`: run with ``-m``, it prints one line naming the new command
and exits 2; imported, it raises ImportError naming the new module. It never imports the studies themselves.
"""

from __future__ import annotations

import sys


def refuse(old: str, new: str) -> None:
    """Called by the package ``old`` when it is imported: ``new`` replaces ``old`` (same arguments)."""
    argv = getattr(sys, "orig_argv", [])
    ran = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"), "")
    if ran == old or ran.startswith(old + "."):
        replacement = new + ran[len(old) :]
        print(
            f"{ran}: error: moved out of the soe package; run `python -m {replacement}` from a checkout "
            "of the repository (same arguments)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    raise ImportError(f"{old} moved out of the soe package: it is {new} in a checkout's studies/ folder")
