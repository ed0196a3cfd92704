"""Known-defect entries keyed by the framework underneath a backend (``framework = "jax"`` for Flax).

A wrapper's defect usually lives in the framework it wraps, and comes and goes with that framework's releases: the
entry's ``versions`` must then be matched against the version the backend declares for that framework
(``Capabilities.frameworks``), never against the wrapper's own. An entry naming a framework the backend does not
declare would match nothing while claiming a defect, so it is an error.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from backprop_conformance.adapters.base import Capabilities, CapabilitiesError
from backprop_conformance.conformance import known_defects
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.known_defects import CONFORMANCE_TESTS, KnownDefectsError, find, load, validate

TESTS = {**dict.fromkeys(CONFORMANCE_TESTS, ()), **FIDELITY_TESTS}
ENTRY = """[[defect]]
backend = "wrapper"
framework = "base"
versions = "<2"
tests = ["test_sigmoid_prime_fidelity"]
paths = ["*"]
dtypes = ["*"]
cases = ["saturated"]
issue = "https://example.org/base/issues/1"
summary = "σ′ computed as a(1 − a) by the framework underneath"
"""


def wrapper(base_version: str = "1.5", **frameworks: str) -> Capabilities:
    """A backend at version 9.0 that runs on ``base`` at ``base_version`` (or on ``frameworks`` when given)."""
    return Capabilities(
        name="wrapper",
        framework="Wrapper",
        version="9.0",
        dtypes=("float32",),
        paths=("jit",),
        default_paths=("jit",),
        frameworks=frameworks or {"base": base_version},
    )


def loaded(tmp_path: Path, text: str = ENTRY) -> list[known_defects.Defect]:
    path = tmp_path / "defects.toml"
    path.write_text(text, encoding="utf-8")
    return load(path)


def test_the_entry_matches_the_version_of_the_framework_underneath(tmp_path: Path) -> None:
    """Wrapper 9.0 on base 1.5: the entry (base < 2) matches, although the wrapper's own version is outside it."""
    defects = loaded(tmp_path)
    assert validate(defects, TESTS, {"wrapper": wrapper("1.5")}) == []
    (defect,) = defects
    assert defect.framework == "base" and defect.framework_version == "1.5"
    assert find(defects, "test_sigmoid_prime_fidelity", "wrapper", "9.0", "jit", "float32", "saturated") is defect
    assert "known upstream defect of base 1.5" in defect.reason


def test_a_fixed_version_underneath_stops_the_match(tmp_path: Path) -> None:
    """Base 2.1 fixed it: the entry no longer matches, whatever the wrapper's own version (which would match < 2)."""
    defects = loaded(tmp_path)
    validate(defects, TESTS, {"wrapper": wrapper("2.1")})
    assert find(defects, "test_sigmoid_prime_fidelity", "wrapper", "1.0", "jit", "float32", "saturated") is None


def test_before_validation_the_entry_matches_nothing(tmp_path: Path) -> None:
    """Without the backend's declaration there is no version to match: never a match against the wrapper's own."""
    defects = loaded(tmp_path)
    assert find(defects, "test_sigmoid_prime_fidelity", "wrapper", "1.0", "jit", "float32", "saturated") is None


def test_a_framework_the_backend_does_not_declare_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        KnownDefectsError, match=r"framework 'base' is not one wrapper declares it runs on \(Capabilities.frameworks: other\)"
    ):
        validate(loaded(tmp_path), TESTS, {"wrapper": wrapper(other="1.0")})


@pytest.mark.parametrize("value", ['""', "3", '["jax"]'])
def test_framework_must_be_a_non_empty_string(tmp_path: Path, value: str) -> None:
    with pytest.raises(KnownDefectsError, match="framework must be the non-empty name of a framework"):
        loaded(tmp_path, ENTRY.replace('framework = "base"', f"framework = {value}"))


@pytest.mark.parametrize(
    ("frameworks", "wanted"),
    [
        (["jax"], "frameworks must be a mapping"),
        ({"ja/x": "1"}, "frameworks has the name 'ja/x'"),
        ({"jax": ""}, r"frameworks\['jax'\] must be"),
    ],
)
def test_capabilities_check_the_declared_frameworks(frameworks: object, wanted: str) -> None:
    with pytest.raises(CapabilitiesError, match=wanted):
        Capabilities(name="w", framework="W", version="1", dtypes=("float32",), paths=("p",), default_paths=(), frameworks=frameworks)  # type: ignore[arg-type]


@pytest.mark.skipif(find_spec("flax") is None, reason="flax not installed")
def test_the_bundled_flax_entries_follow_jax_s_version() -> None:
    """The suite's own Flax entries are keyed by JAX: validated against the Flax adapter, each holds JAX's version."""
    from backprop_conformance.adapters.flax_adapter import FlaxAdapter

    caps = FlaxAdapter().caps
    defects = known_defects.load(known_defects.DEFAULT_FILE)
    validate(defects, TESTS, {"flax": caps})
    flax_entries = [d for d in defects if d.backend == "flax"]
    assert flax_entries and all(d.framework == "jax" and d.framework_version == caps.frameworks["jax"] for d in flax_entries)
    assert all("jax-ml/jax/issues" in d.issue for d in flax_entries)
