"""atheris fuzz target: WAL decoding and recovery (arbitrary bytes as a WAL file).

    python fuzz/fuzz_wal.py -max_total_time=3600 fuzz/corpus/wal

The input layout and the checks are in fuzz/targets.py (``wal_one_input``); see
fuzz/README.md and fuzz/atheris_main.py.
"""

from atheris_main import fuzz

if __name__ == "__main__":
    fuzz("wal")
