"""atheris fuzz target: tree-page, overflow-run and freelist-run decoding.

    python fuzz/fuzz_page.py -max_total_time=3600 fuzz/corpus/page

The input layout and the checks are in fuzz/targets.py (``page_one_input``); see
fuzz/README.md and fuzz/atheris_main.py.
"""

from atheris_main import fuzz

if __name__ == "__main__":
    fuzz("page")
