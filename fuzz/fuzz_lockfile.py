"""atheris fuzz target: the lock file header and reader table (kvmap/readers.py).

    python fuzz/fuzz_lockfile.py -max_total_time=3600 fuzz/corpus/lockfile

The input layout and the checks are in fuzz/targets.py (``lockfile_one_input``); see
fuzz/README.md and fuzz/atheris_main.py.
"""

from atheris_main import fuzz

if __name__ == "__main__":
    fuzz("lockfile")
