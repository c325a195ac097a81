"""The one atheris entry point the ``fuzz_<target>.py`` scripts share.

kvmap and fuzz/targets.py are imported inside :func:`fuzz`, under
``atheris.instrument_imports``, so that the coverage feedback sees them (nothing may import
kvmap before).  Known kvmap bugs are tolerated so the fuzzer explores past them, unless
``KVMAP_FUZZ_STRICT=1``.  See fuzz/README.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def fuzz(target: str) -> None:
    """Run atheris on ``target`` (a name of ``targets.TARGETS``) with ``sys.argv``'s
    libFuzzer options (``-max_total_time=3600``, a corpus directory, ...)."""
    import atheris

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with atheris.instrument_imports(include=["kvmap", "targets"]):
        import targets

    if os.environ.get("KVMAP_FUZZ_STRICT") == "1":
        one_input: Callable[[bytes], object] = targets.ONE_INPUT[target]
    else:

        def one_input(data: bytes) -> object:
            return targets.run(target, data)

    def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' documented name
        one_input(data)

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
