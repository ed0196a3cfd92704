"""``python -m backprop_conformance plot`` (conformance/plot.py), driven through the command line's ``main`` in-process.

The report is synthetic and holds every case the axis must place: exact zeros, ratios too small and
too large for the scale, infinite ratios, several dtypes and a non-CPU device. Whether the images read
well was checked by eye on a torch and jax run; these tests check that the files are written, that the
axis puts each kind of ratio where the module's docstring says, and that every failure is a message,
not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from reports import cell, run

from backprop_conformance.conformance import report
from backprop_conformance.conformance.__main__ import main
from backprop_conformance.conformance.plot import FILES, RatioAxis

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the plot extra (matplotlib) is not installed")


def synthetic_report(path: Path, examples: bool = True) -> Path:
    rng = np.random.default_rng(1)
    ids = [f"fake-{p}-{d}" for p in ("eager", "jit") for d in ("float64", "float32", "bfloat16")] + ["fake-eager-float32-gpu"]
    cells = []
    for cell_id in ids:
        if not examples:
            cells.append(cell(cell_id))
            continue
        ratios = list(10.0 ** rng.uniform(-4, -0.3, 30))
        if cell_id.endswith("float64"):
            ratios += [0.0, 1e-200]
        if cell_id == "fake-jit-float32":
            ratios += [math.inf, 3.0, 1e140]
        n = len(ratios)
        cells.append(cell(cell_id, *ratios, depths=[int(d) for d in rng.integers(2, 9, n)], zs=list(10.0 ** rng.uniform(-1, 3, n))))
    report.write(run(*cells), path)
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@needs_matplotlib
def test_plot_writes_the_three_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = synthetic_report(tmp_path / "report.json")
    assert main(["plot", str(source), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "plots" / name) for name in FILES]
    assert FILES == ("ratio_vs_depth.png", "ratio_vs_max_abs_z.png", "ratio_distribution.png")
    for name in FILES:
        width, height = png_size(tmp_path / "plots" / name)
        assert width >= 800 and height >= 500, f"{name}: {width}×{height} pixels"


def test_axis_places_zeros_infinities_and_out_of_scale_ratios() -> None:
    axis = RatioAxis.for_ratios([0.0, 1e-9, 0.05, 3e7, math.inf])
    assert axis == RatioAxis(low=-6, high=6, tiny=True, huge=True)
    assert axis.place([0.0, 1e-9, 0.05, 3e7, math.inf, math.nan]).tolist() == [1e-7, 1e-7, 0.05, 1e6, 1e7, 1e7]


def test_axis_of_a_passing_run_spans_its_data_and_the_bound() -> None:
    axis = RatioAxis.for_ratios([0.02, 0.5])
    assert axis == RatioAxis(low=-2, high=0, tiny=False, huge=False)
    assert axis.place([0.0, 0.02, math.inf]).tolist() == [1e-3, 0.02, 10.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        (
            json.dumps({"schema": "backprop-conformance/case/1"}),
            "not a backprop-conformance report of this version (schema 'backprop-conformance/case/1'",
        ),
        (json.dumps({**report.Report(cells=[]).to_json(), "cells": [{"id": "x"}]}), "cells[0]: missing field"),
    ],
    ids=["missing", "not-json", "case-file", "malformed-cell"],
)
def test_bad_report_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and message in err and "Traceback" not in err, err
    assert not (tmp_path / "plots").exists()


def test_report_without_examples_has_nothing_to_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = synthetic_report(tmp_path / "report.json", examples=False)
    assert main(["plot", str(source), "--out", str(tmp_path / "plots")]) == 2
    assert "no cell ran any example; nothing to plot" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    source = synthetic_report(tmp_path / "report.json")
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(source), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert "plotting needs matplotlib" in err and "pip install 'backprop-conformance[plot]'" in err, err
