"""atheris fuzz target: operations on a 512-byte-page database, checked against a dict.

    python fuzz/fuzz_ops.py -max_total_time=3600 fuzz/corpus/ops

The input layout and the checks are in fuzz/targets.py (``ops_one_input``); see
fuzz/README.md.  Known kvmap bugs are tolerated so the fuzzer explores past them, unless
KVMAP_FUZZ_STRICT=1.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["kvmap", "targets"]):
    import targets

TARGET = "ops"
STRICT = os.environ.get("KVMAP_FUZZ_STRICT") == "1"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' documented name
    if STRICT:
        targets.ONE_INPUT[TARGET](data)
    else:
        targets.run(TARGET, data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
