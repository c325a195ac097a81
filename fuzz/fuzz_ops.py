"""atheris fuzz target: operations on a 512-byte-page database, checked against a dict.

    python fuzz/fuzz_ops.py -max_total_time=3600 fuzz/corpus/ops

The input layout and the checks are in fuzz/targets.py (``ops_one_input``); see
fuzz/README.md and fuzz/atheris_main.py.
"""

from atheris_main import fuzz

if __name__ == "__main__":
    fuzz("ops")
