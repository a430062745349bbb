"""Table import: position gaps are rejected naming file, line and request; the command line names
its own flags when the table import lacks a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.cli import main
from workloads import RoutingTrace, TraceFormatError, import_trace

HEADER = "request,position,phase,layer,experts,weights\n"


def test_position_gap_names_file_line_and_request(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text(HEADER + '3,0,decode,1,"1 2",\n3,5,decode,1,"0 2",\n')
    with pytest.raises(TraceFormatError, match=r"gap\.csv: line 3: request 3 jumps from position 0 to 5"):
        import_trace("table", path, n_experts=4)


def test_consecutive_positions_from_any_start_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"  # decode steps numbered after an unrecorded prompt: 40, 41; another request at 0
    path.write_text(HEADER + '3,41,decode,1,"1 2",\n3,40,decode,1,"0 2",\n4,0,decode,1,"3 1",\n')
    trace = import_trace("table", path, n_experts=4)
    assert isinstance(trace, RoutingTrace) and trace.n_tokens == 3
    assert trace.position.tolist() == [40, 41, 0]


def test_cli_table_without_model_names_the_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + '0,0,decode,1,"1 2",\n')
    assert main(["trace", "import", "-f", "table", str(path), "-o", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--model PRESET or --n-experts E" in err and "model=" not in err
    assert not (tmp_path / "x.npz").exists()
    argv = ["trace", "import", "-f", "table", str(path), "-o", str(tmp_path / "x.npz"), "--model", "mixtral-8x7b"]
    assert main([*argv, "--n-experts", "8"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(argv) == 0
