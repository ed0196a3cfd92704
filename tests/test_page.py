"""The compatibility page (conformance/page.py), rendered in a real headless Chromium.

The page is built from a real run of the suite: four backends that need no framework (the example plug-in, two
correct numpy adapters, and a mutant whose float64 cell fails with case files and whose float32 cell a known-defects
file marks as a known upstream defect), merged with a copy of the same report edited to come from another Python on another CPU, so that
the table has two configuration columns. Chromium (Debian's ``chromium`` and ``chromium-driver``, or Google Chrome
with its driver) loads the file with no server, the test checks the table, the links and what a click opens, and
keeps a screenshot under ``test-artifacts/`` (CI uploads it). Without a browser the browser test skips with the
reason; under ``CI=true`` it fails instead, so that CI cannot pass without having looked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CORRECT_ADAPTER, REPO_ROOT, suite

from backprop_conformance.conformance import merge, page, report
from backprop_conformance.conformance.__main__ import main as commands

EXAMPLE = "backprop_conformance.adapters.example_numpy:NumpyAdapter"
BACKENDS = (
    *("--conformance-backend", EXAMPLE, *CORRECT_ADAPTER),
    *("--conformance-backend", "tests.mutants:ZeroBiasGradient", "--conformance-backend", "tests.mutants:OutputSigmaPrime"),
)
ARTIFACTS = REPO_ROOT / "test-artifacts"
"""Where the browser test leaves its screenshot; .github/workflows/conformance.yml uploads the directory."""
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
UPSTREAM = "https://github.com/example/zero-bias/issues/1"
KNOWN_DEFECT = (
    'defect = [{backend = "mut-zero-bias", versions = "*", tests = ["test_gradients"], paths = ["*"], dtypes = ["float32"], '
    f'issue = "{UPSTREAM}", summary = "the bias gradient is zero"}}]\n'
)
"""The mutant's float32 cell as a known upstream defect (its float64 cell fails): both squares, and a link upstream."""
OTHER_PYTHON, OTHER_CPU = "3.12.1", "Another CPU (edited copy)"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real four-backend run's report, and a copy of it edited to another Python and CPU (a second column)."""
    tmp = tmp_path_factory.mktemp("page")
    defects = tmp / "known.toml"
    defects.write_text(KNOWN_DEFECT, encoding="utf-8")
    run = suite(tmp / "run", *BACKENDS, f"--conformance-known-defects={defects}", "--conformance-max-examples", "3", CI="true")
    assert run.report is not None and run.returncode == 1, run.explain()  # the mutant fails in float64
    assert {c.backend for c in run.report.cells} == {"numpy-example", "ok-stable", "mut-zero-bias", "ok-output-sigma-prime"}
    first = tmp / "run" / "report.json"
    data = json.loads(first.read_text(encoding="utf-8"))
    data["environment"]["python"] = OTHER_PYTHON
    for cell in data["cells"]:
        cell["dispatch"] = {**cell["dispatch"], "cpu.model": OTHER_CPU}
    second = tmp / "other.json"
    second.write_text(json.dumps(data), encoding="utf-8")
    return [first, second]


@pytest.fixture(scope="module")
def site(reports: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert commands(["page", *map(str, reports), "--out", str(out)]) == 0
    return out


def test_the_page_is_one_static_file_with_every_cell_and_its_case_files(reports: list[Path], site: Path) -> None:
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")  # nothing to run, nothing to fetch
    merged = merge.merge([report.read(p) for p in reports])
    for cell in merged.cells:
        assert f'data-cell="{cell.id}"' in html
    copied = sorted(p.name for p in (site / page.CASES).iterdir())
    expected = sorted({Path(f).name for c in merged.cells for f in c.case_files})
    assert copied == expected and copied
    assert f'<a href="{UPSTREAM}">{UPSTREAM}</a>' in html


def test_a_cell_of_a_built_in_backend_links_the_suite_s_known_defects(tmp_path: Path) -> None:
    """The suite's own entries for torch's σ′ (fidelity tests, every path and dtype) flag a torch cell that passed."""
    cell = report.CellResult("torch-eager-float64", "torch", "eager", "float64", status="passed", contract="passed")
    cell.add_example(0.06, 3, 1.0, False)
    cell.configuration = {"framework": "PyTorch", "version": "2.13.0", "python": "3.11.7", "os": "Linux", "machine": "x86_64"}
    context = page.build(report.Report(cells=[cell]), tmp_path, [tmp_path])
    (square,) = context["squares"]
    assert {d.issue for d in square.defects} == {"https://github.com/pytorch/pytorch/issues/195681"}
    html = page.render(context)
    assert "⚑ 2 known defect(s)" in html and '<a href="https://github.com/pytorch/pytorch/issues/195681">' in html


def test_a_stranger_s_text_is_escaped(reports: list[Path], tmp_path: Path) -> None:
    data = json.loads(reports[0].read_text(encoding="utf-8"))
    data["cells"][0]["problems"] = ['<img src=x onerror="alert(1)"> see https://example.org/a?b=<c>']
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(data), encoding="utf-8")
    assert commands(["page", str(hostile), "--out", str(tmp_path / "site")]) == 0
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "<img" not in html and "&lt;img src=x" in html
    assert '<a href="https://example.org/a?b=">https://example.org/a?b=</a>&lt;c&gt;' in html


def test_refused_reports_are_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}', encoding="utf-8")
    assert commands(["page", str(bad), "--out", str(tmp_path / "site")]) == merge.USAGE
    assert f"{bad}: not a backprop-conformance report" in capsys.readouterr().err
    assert commands(["page", str(bad), "--out", str(bad)]) == merge.USAGE
    assert f"--out {bad}: is a file; give a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "worst", "wanted"),
    [("passed", 0.0, "hsl(130, 65%, 82%)"), ("passed", 1.0, "hsl(45, 65%, 70%)"), ("failed", 3.0, "hsl(0, 80%, 72%)")],
)
def test_the_colour_follows_the_bound_used(status: str, worst: float, wanted: str) -> None:
    cell = report.CellResult("b-p-float64", "b", "p", "float64", status=status)
    cell.add_example(worst, 3, 1.0, worst > 1)
    assert page.colour(cell) == wanted


# In a real browser.


def browser() -> tuple[str, str]:
    """Chromium's (or Chrome's) binary and its driver; skipped with the reason when absent, a failure under CI=true."""
    binary = os.environ.get("BACKPROP_CONFORMANCE_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver")
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if binary is None:
        missing.append("a Chromium browser (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        why = "the page's browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}; under CI=true it must run, not skip")
        pytest.skip(why)
    assert binary is not None and driver is not None
    return binary, driver


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_without_a_browser_ci_fails_where_a_local_run_skips(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("BACKPROP_CONFORMANCE_CHROMIUM", raising=False)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="needs a Chromium browser"):
        browser()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[object]:
    binary, driver = browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1500,1200",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def test_the_page_renders_in_chromium_and_a_click_opens_the_evidence(reports: list[Path], site: Path, chromium: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(chromium, WebDriver)
    merged = merge.merge([report.read(p) for p in reports])
    chromium.get((site / "index.html").as_uri())
    assert chromium.title == "backprop-conformance: compatibility"
    headers = [th.text for th in chromium.find_elements(By.CSS_SELECTOR, "table.matrix thead th")]
    assert headers[:2] == ["cell", "framework"] and len(headers) == 4
    assert any(f"Python {OTHER_PYTHON}" in h for h in headers) and any(OTHER_CPU in h for h in headers)
    squares = chromium.find_elements(By.CSS_SELECTOR, "td.square a")
    assert sorted(a.get_attribute("data-cell") for a in squares) == sorted(c.id for c in merged.cells)
    assert all(a.is_displayed() for a in squares)
    rows = chromium.find_elements(By.CSS_SELECTOR, "table.matrix tbody tr")
    assert len(rows) == len({c.id.split("@")[0] for c in merged.cells})  # one row per cell, a column per configuration
    statuses = {a.get_attribute("data-status") for a in squares}
    assert {"passed", "failed", "known defect"} <= statuses
    # A failing cell: its evidence is hidden until the click, then shows the worst element, case files and replay.
    failing = next(a for a in squares if a.get_attribute("data-status") == "failed")
    anchor = failing.get_attribute("href").rsplit("#", 1)[1]
    detail = chromium.find_element(By.ID, anchor)
    assert not detail.is_displayed()
    failing.click()
    assert detail.is_displayed()
    assert "framework" in detail.find_element(By.CSS_SELECTOR, ".worst").text and "bound" in detail.text
    replay = merged.cell(failing.get_attribute("data-cell")).replay  # type: ignore[union-attr]
    assert replay and " replay " in replay and detail.find_element(By.CSS_SELECTOR, ".replay").text == replay
    links = detail.find_elements(By.CSS_SELECTOR, ".case a")
    assert links and all((site / a.get_attribute("href").split(site.as_uri() + "/", 1)[1]).is_file() for a in links)
    ARTIFACTS.mkdir(exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "compatibility-page-evidence.png"))
    # A known defect: its square opens the link to the upstream issue.
    known = next(a for a in squares if a.get_attribute("data-status") == "known defect")
    known.click()
    detail = chromium.find_element(By.ID, known.get_attribute("href").rsplit("#", 1)[1])
    assert detail.is_displayed()
    assert [a.get_attribute("href") for a in detail.find_elements(By.CSS_SELECTOR, ".problem a")] == [UPSTREAM], detail.text
    chromium.execute_script("window.scrollTo(0, 0)")
    height = chromium.execute_script("return document.querySelector('table.matrix').getBoundingClientRect().bottom")
    chromium.execute_cdp_cmd(  # the viewport exactly as tall as the table: the screenshot shows every cell
        "Emulation.setDeviceMetricsOverride", {"width": 1500, "height": int(height) + 24, "deviceScaleFactor": 1, "mobile": False}
    )
    assert chromium.save_screenshot(str(ARTIFACTS / "compatibility-page.png"))
