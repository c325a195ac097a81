"""atheris fuzz target: meta page decoding, the choice of meta, page-size discovery.

    python fuzz/fuzz_meta.py -max_total_time=3600 fuzz/corpus/meta

The input layout and the checks are in fuzz/targets.py (``meta_one_input``); see
fuzz/README.md and fuzz/atheris_main.py.
"""

from atheris_main import fuzz

if __name__ == "__main__":
    fuzz("meta")
