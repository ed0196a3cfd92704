"""``backprop-conformance bisect CASE.json --versions V...``: which release of a framework brought a failure, or fixed it.

A case file holds one failing example; a maintainer's next question is "since when?". For each requested version of
the case's framework this command makes a virtual environment with that version (pip, from the package index pip is
configured with, or the one given), replays the case there (:mod:`~backprop_conformance.conformance.replay`, in a
subprocess of that environment's interpreter), and prints each version's verdict and the versions where the verdict
changes. The environments are cached (``$BACKPROP_CONFORMANCE_CACHE_DIR/bisect``, see
:func:`~backprop_conformance.conformance.options.default_cache_dir`): a second bisect over the same versions installs
nothing.

Each environment sees the packages of the environment the command runs in (a ``.pth`` file adds its site directories
after the new environment's own): the suite and its dependencies (numpy, hypothesis, the other frameworks a Keras
backend needs) as installed here, which may themselves be a virtual environment (``--system-site-packages`` would
reach only the base interpreter's). pip installs only the framework at the requested version, with whatever that
version requires, into the new environment's own site-packages, which come first on its import path. The version
the environment then imports is checked before the replay, so a verdict is never put on the wrong release.

Every version is tried, in version order, rather than halving the range: a defect can come and go (fixed in one
release, back in the next), and halving would report one change where there were two. A version whose download would
exceed ``--max-download-mb`` (the sizes of the files pip would fetch, asked before fetching) is refused, not
installed: some frameworks' releases are multi-GB GPU builds on the public index.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from backprop_conformance.conformance import cases, fidelity_cases
from backprop_conformance.conformance.options import default_cache_dir

PACKAGES = {"torch": "torch", "jax": "jax[cpu]", "tensorflow": "tensorflow", "keras": "keras", "mlx": "mlx[cpu]", "flax": "flax"}
"""The distribution (with extras) that provides each built-in backend's framework; a plug-in's is named with --package."""

DEFAULT_MAX_DOWNLOAD_MB = 1000.0
"""Larger than any CPU build of a supported framework (torch's CPU wheel is about 200 MB, jaxlib's about 80 MB); smaller
than the CUDA builds the public index serves for torch (several GB with their nvidia-* dependencies)."""

CPU_BUILDS = {
    "torch": "; PyPI's torch is a CUDA build (about 2.7 GB with its nvidia-* wheels): install the CPU build from PyTorch's "
    "index with --index-url https://download.pytorch.org/whl/cpu (or raise --max-download-mb)"
}
"""What a refusal adds for a framework whose public index serves GPU builds: where its CPU builds are (docs/ci.md)."""

REPLAY_TIMEOUT = 900.0
"""Seconds one replay may take in its environment: importing a framework and one network's gradients, generously."""

VERDICTS = ("pass", "fail", "error", "refused", "not installed")
"""``pass``/``fail``: the replay's verdict (exit status 0/1). ``error``: the replay could not judge (the adapter cannot
load or run this version). ``refused``: the download was too large. ``not installed``: pip could not install it."""

USAGE = 2


class BisectError(ValueError):
    """A bisect that cannot be made as asked; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Outcome:
    version: str
    verdict: str
    detail: str


def requirement(package: str, version: str) -> str:
    """``package==version``, extras kept: ``jax[cpu]==0.4.30``."""
    return f"{package}=={version}"


def distribution(package: str) -> str:
    """The distribution name of a requirement's package: ``jax[cpu]`` → ``jax``."""
    return package.split("[", 1)[0]


def ordered(versions: Sequence[str]) -> list[str]:
    """The versions, unique, in version order; one that is not a version (PEP 440) is a :class:`BisectError`."""
    try:
        return sorted(dict.fromkeys(versions), key=Version)
    except InvalidVersion as exc:
        raise BisectError(f"--versions: {exc}; give release numbers such as 3.0.0 3.1.0") from None


def pip_options(index_url: str | None, find_links: Sequence[str]) -> list[str]:
    return [*(["--index-url", index_url] if index_url else []), *(arg for link in find_links for arg in ("--find-links", link))]


class Environments:
    """The cached virtual environments of a bisect, one per (requirement, Python, pip options)."""

    def __init__(self, root: Path, options: Sequence[str], max_download_mb: float) -> None:
        self.root, self.options, self.max_download_mb = root, list(options), max_download_mb

    def path(self, package: str, version: str) -> Path:
        key = json.dumps([requirement(package, version), sys.version, sys.executable, self.options])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.root / f"{distribution(package)}-{version}-py{sys.version_info[0]}.{sys.version_info[1]}-{digest}"

    def python(self, where: Path) -> Path:
        return where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def prepare(self, package: str, version: str) -> tuple[Path | None, Outcome | None]:
        """The environment's interpreter, made if needed; or, when it cannot be, the outcome that says why."""
        where = self.path(package, version)
        ready = where / "bisect-ready.json"
        if ready.is_file():
            return self.python(where), None
        shutil.rmtree(where, ignore_errors=True)  # a half-made environment (a killed install) is made again
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
        python = self.python(where)
        inherit(python)
        pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check", *self.options]
        wanted = requirement(package, version)
        size, biggest = self.download_size(pip, wanted)
        if size is not None and size > self.max_download_mb * 1e6:
            shutil.rmtree(where, ignore_errors=True)
            return None, Outcome(
                version,
                "refused",
                f"the download would be {size / 1e6:.0f} MB (largest: {biggest}), over --max-download-mb {self.max_download_mb:g}"
                + CPU_BUILDS.get(distribution(package), "; raise --max-download-mb, or name an index with smaller builds"),
            )
        done = subprocess.run([*pip, "--quiet", wanted], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(where, ignore_errors=True)
            last = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")][-1:]
            return None, Outcome(version, "not installed", f"pip install {wanted} failed: {' '.join(last) or 'no message'}")
        ready.write_text(json.dumps({"requirement": wanted, "options": self.options}), encoding="utf-8")
        return python, None

    def download_size(self, pip: list[str], wanted: str) -> tuple[int | None, str]:
        """Bytes pip would download to install ``wanted`` here, and the largest file; None when pip cannot say."""
        with tempfile.TemporaryDirectory() as scratch:
            plan = Path(scratch) / "plan.json"
            command = [*pip, "--dry-run", "--quiet", "--report", str(plan), wanted]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not plan.is_file():
                return None, ""
            items = json.loads(plan.read_text(encoding="utf-8")).get("install", [])
        sizes = {item["download_info"]["url"].rsplit("/", 1)[-1]: _size(item["download_info"]["url"]) for item in items}
        biggest = max(sizes, key=lambda name: sizes[name], default="")
        return sum(sizes.values()), f"{biggest} {sizes.get(biggest, 0) / 1e6:.0f} MB"


def inherit(python: Path) -> None:
    """Let the environment of ``python`` import what this one can, after its own packages: a ``.pth`` file in its
    site-packages adding this interpreter's site directories (their own ``.pth`` files, editable installs among them,
    are processed too)."""
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    parents = [p for p in dict.fromkeys([*site.getsitepackages(), site.getusersitepackages()]) if os.path.isdir(p)]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    Path(own).mkdir(parents=True, exist_ok=True)
    Path(own, "backprop-conformance-bisect-parent.pth").write_text(lines, encoding="utf-8")


def _size(url: str) -> int:
    """The size of a file pip would fetch: from the file system for a local index, else the server's Content-Length."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        return path.stat().st_size if path.is_file() else 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as response:
            return int(response.headers.get("Content-Length") or 0)
    except (OSError, ValueError):
        return 0


def installed_version(python: Path, package: str) -> str | None:
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution(package)!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def replay_in(python: Path, case: Path, backends: Sequence[str], version: str) -> Outcome:
    """The case replayed by the environment's interpreter, in a scratch directory (nothing beside the case is imported)."""
    command = [str(python), "-m", "backprop_conformance", "replay", str(case.resolve()), *(a for b in backends for a in ("--backend", b))]
    with tempfile.TemporaryDirectory() as scratch:
        try:
            done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=REPLAY_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return Outcome(version, "error", f"the replay took more than {REPLAY_TIMEOUT:g} s")
    lines = done.stdout.splitlines()
    verdict_lines = [line for line in lines if line.startswith(("PASS ", "FAIL "))]
    if done.returncode in (0, 1) and verdict_lines:
        failing = [line for line in verdict_lines if line.startswith("FAIL ")]
        return Outcome(version, "fail" if done.returncode else "pass", (failing or verdict_lines)[0][5:])
    message = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
    return Outcome(version, "error", f"the replay exited with status {done.returncode}: {message[0]}")


def changes(outcomes: Sequence[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """Consecutive judged versions (pass or fail) whose verdicts differ; versions that could not be judged are skipped."""
    judged = [o for o in outcomes if o.verdict in ("pass", "fail")]
    return [(a, b) for a, b in itertools.pairwise(judged) if a.verdict != b.verdict]


def bisect(
    case_path: Path,
    versions: Sequence[str],
    *,
    package: str | None,
    backends: Sequence[str],
    environments: Environments,
    say: object = print,
) -> list[Outcome]:
    """Every version's outcome, in version order, each printed as it comes (``say``)."""
    case = cases.read(case_path)
    chosen = package or PACKAGES.get(case.cell.backend)
    if chosen is None:
        raise BisectError(
            f"{case_path}: the case's backend {case.cell.backend!r} is not built in; name the distribution that provides its "
            f"framework with --package (e.g. --package myframework)"
        )
    outcomes = []
    for version in ordered(versions):
        python, refused = environments.prepare(chosen, version)
        if python is None:
            assert refused is not None
            outcome = refused
        else:
            found = installed_version(python, chosen)
            if found is None or Version(found) != Version(version):
                outcome = Outcome(version, "error", f"the environment imports {distribution(chosen)} {found}, not {version}")
            else:
                outcome = replay_in(python, case_path, backends, version)
        outcomes.append(outcome)
        say(f"{distribution(chosen)} {outcome.version:<12} {outcome.verdict:<13} {outcome.detail}")  # type: ignore[operator]
    return outcomes


def main(
    case: str | None,
    fidelity: str | None,
    versions: Sequence[str],
    package: str | None,
    backends: Sequence[str],
    index_url: str | None,
    find_links: Sequence[str],
    cache_dir: str | None,
    max_download_mb: float,
) -> int:
    """Exit status 0 when every requested version was judged or refused with a reason; 2 for a request that cannot be made.

    ``fidelity`` (a fidelity test id) instead of ``case``: the case file is written from the suite's fidelity tables
    into the cache directory (:mod:`~backprop_conformance.conformance.fidelity_cases`) and bisected like any other.
    """
    root = Path(cache_dir) if cache_dir else Path(default_cache_dir()) / "bisect"
    environments = Environments(root, pip_options(index_url, find_links), max_download_mb)
    try:
        if (case is None) == (fidelity is None):
            raise BisectError("give either a case file or --fidelity TEST_ID (a fidelity test's id), not both or neither")
        if not versions:
            raise BisectError("--versions: give at least one version")
        if not max_download_mb > 0:
            raise BisectError(f"--max-download-mb must be a positive number of megabytes, got {max_download_mb:g}")
        if fidelity is not None:
            case = str(fidelity_cases.write(fidelity, root / "fidelity-cases"))
            print(f"fidelity case {fidelity}: {case}")
        assert case is not None
        outcomes = bisect(Path(case), versions, package=package, backends=backends, environments=environments)
    except (BisectError, cases.CaseError, fidelity_cases.FidelityIdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    found = changes(outcomes)
    if found:
        first, then = found[0]
        print(f"first change: {first.verdict} in {first.version}, {then.verdict} from {then.version}")
        for before, after in found[1:]:
            print(f"then: {before.verdict} in {before.version}, {after.verdict} from {after.version}")
    else:
        judged = sorted({o.verdict for o in outcomes if o.verdict in ("pass", "fail")})
        print(f"no change: every judged version gives {judged[0]}" if judged else "no version could be judged")
    return 0
