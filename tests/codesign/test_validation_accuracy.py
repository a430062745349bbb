"""Full-size validation cases that run in seconds reproduce the errors the committed table quotes.

`codesign/validation_cases/README.md` reports the full-size table (`codesign validate-e2e`). Most
serving cases take minutes at full size, so CI re-runs the suite in reduced mode for structure
(`test_validation.py`); the cases below are cheap at full size (collectives, batch-1 llama.cpp
decode, link-bound ZeRO-3 runs), so they are run as the README ran them and their signed
errors must match the table to its printed precision (0.1 %). A change that moves one of them
fails here until the table is re-run, so the README cannot drift from the code, and an accuracy
regression on these cases shows in CI.
"""

from __future__ import annotations

import re

import pytest

from codesign.validation import case_dir, load_cases, run_suite

#: Cases that run at full size in a few seconds in all (the test module: 3.9 s on the 2-core dev
#: machine, 2026-12-04).
CHEAP_CASES = (
    "nccl-alltoall-4xh100",
    "deepep-ll-ep8-dispatch",
    "deepep-ll-ep8-combine",
    "deepep-ll-ep16-dispatch",
    "deepep-ll-ep16-combine",
    "deepep-ll-ep32-dispatch",
    "deepep-ll-ep32-combine",
    "deepep-ll-ep64-dispatch",
    "deepep-ll-ep64-combine",
    "deepep-ll-ep128-dispatch",
    "deepep-ll-ep128-combine",
    "deepep-ll-ep256-dispatch",
    "deepep-ll-ep256-combine",
    "llamacpp-q5km-a100-b1",
    "llamacpp-q5km-h100-b1",
    "fiddler-zero3-ada6000-b16",
    "fiddler-zero3-l4-b1",
    "fiddler-zero3-l4-b16",
    "fiddler-zero3-l4-prefill",
)


def _table_errors() -> dict[str, float]:
    """Signed simulator error (a fraction) of each case row of the README's result table."""
    text = (case_dir() / "README.md").read_text(encoding="utf-8")
    out: dict[str, float] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6:
            continue
        m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)%", cells[5])
        if m and cells[0] not in out:
            out[cells[0]] = float(m.group(1)) / 100.0
    return out


@pytest.fixture(scope="module")
def full_size_results():
    return {r.name: r for r in run_suite(load_cases(list(CHEAP_CASES)), reduced=False)}


def test_the_readme_table_lists_every_cheap_case():
    table = _table_errors()
    missing = [c for c in CHEAP_CASES if c not in table]
    assert not missing, f"codesign/validation_cases/README.md has no result row for {missing}"


@pytest.mark.parametrize("name", CHEAP_CASES)
def test_full_size_error_matches_the_committed_table(name, full_size_results):
    result = full_size_results[name]
    assert not result.reduced
    quoted = _table_errors()[name]
    assert result.error == pytest.approx(quoted, abs=0.0005 + 1e-9), (
        f"{name}: simulated error {result.error:+.2%} but the README table says {quoted:+.1%}; "
        "re-run `codesign validate-e2e` and update codesign/validation_cases/README.md"
    )
