"""Finding adapters: built-in ones, installed plug-ins, and ``module:attribute`` names.

Nothing here imports a framework. Built-in adapters are listed with the import names they need, so
that a missing framework is found with :func:`importlib.util.find_spec` (which does not import it) and
reported as ``skipped: <framework> not installed``. Third-party adapters are found through the entry
point group :data:`ENTRY_POINT_GROUP` or named directly as ``package.module:Attribute``; their module is
imported (by contract it does not import its framework at import time) and their ``requires`` checked
the same way.

Only a framework listed in ``requires`` being absent makes an adapter *unavailable* (a skip, with the
reason). Everything else that goes wrong while loading one -- a module that does not exist, raises at
import or has a syntax error, a constructor or ``capabilities()`` that raises, capabilities the suite
cannot test -- is an :class:`~backprop_conformance.adapters.base.AdapterError` naming the adapter and
the cause, which the suite turns into a usage error: a broken plug-in must never pass as "skipped". That includes
an adapter class that defines one of the suite's own methods
(:class:`~backprop_conformance.adapters.base.PluginInterfaceError`, raised as its module is imported).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backprop_conformance.adapters.base import Adapter, AdapterError, CapabilitiesError

ENTRY_POINT_GROUP = "backprop_conformance.adapters"
"""Entry-point group for third-party adapters: ``name = "package.module:AdapterClass"``."""

IMPORT_HINT = (
    "is the module on the import path? Set PYTHONPATH to its directory, or run `python -m pytest` (or `python -m "
    "backprop_conformance`) rather than a script such as `pytest`, which does not put the working directory on sys.path"
)


class AdapterUnavailable(Exception):
    """The adapter cannot run here (a framework in its ``requires`` is missing); the message is the skip reason."""


class UnknownAdapter(AdapterError, ValueError):
    """A name that is neither a known adapter nor a ``module:attribute`` reference that exists."""


@dataclass(frozen=True)
class AdapterSpec:
    """Where an adapter lives and what it needs, known without importing it."""

    name: str
    target: str
    source: str
    requires: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """Import names among :attr:`requires` that are not installed (checked without importing them)."""
        return [module for module in self.requires if not _installed(module)]

    def load(self) -> Adapter:
        """Import and instantiate the adapter, and ask its capabilities once, so that they are checked now.

        Raises :class:`AdapterUnavailable` when a framework in ``requires`` is missing, and
        :class:`~backprop_conformance.adapters.base.AdapterError` (:class:`UnknownAdapter` for a name
        that leads nowhere) for anything else, naming the adapter and the cause.
        """
        self._raise_if_missing(self.requires)
        module_name, _, attribute = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            parents = {".".join(module_name.split(".")[: i + 1]) for i in range(module_name.count(".") + 1)}
            if exc.name in parents:
                raise UnknownAdapter(
                    f"adapter {self.name!r}: there is no module {exc.name!r} (from {self.source}: {self.target}); {IMPORT_HINT}"
                ) from None
            raise AdapterError(
                f"adapter {self.name!r}: importing {module_name!r} failed: {exc}. If {exc.name!r} is the framework the adapter "
                "puts on trial, import it inside the adapter's methods and list it in `requires`, so that its absence is a skip"
            ) from None
        except AdapterError as exc:  # the suite's own verdict on a class in the module (a suite method overridden, ...)
            raise type(exc)(f"adapter {self.name!r} (from {self.source}: {self.target}): {exc}") from None
        except Exception as exc:  # a plug-in's module may raise anything at import; the user must see which and where
            raise AdapterError(f"adapter {self.name!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
        try:
            obj = getattr(module, attribute)
        except AttributeError:
            raise UnknownAdapter(
                f"module {module_name!r} has no attribute {attribute!r} (adapter {self.name!r}, from {self.source})"
            ) from None
        if isinstance(obj, type):
            if not issubclass(obj, Adapter):
                raise UnknownAdapter(
                    f"{self.target} is the class {obj.__name__}, not a backprop_conformance.adapters.base.Adapter subclass "
                    "(see docs/adapters.md)"
                )
            if inspect.isabstract(obj):
                missing_methods = ", ".join(sorted(obj.__abstractmethods__))
                raise UnknownAdapter(f"{self.target} is abstract: it does not implement {missing_methods} (see docs/adapters.md)")
            self._raise_if_missing(obj.requires)
            try:
                obj = obj()
            except Exception as exc:  # the constructor is the plug-in's code: any exception is its author's to see
                raise AdapterError(f"adapter {self.name!r}: {self.target}() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(obj, Adapter):
            raise UnknownAdapter(
                f"{self.target} is a {type(obj).__name__}, not a backprop_conformance.adapters.base.Adapter "
                "subclass or instance (see docs/adapters.md)"
            )
        self._raise_if_missing(type(obj).requires)
        try:
            obj.caps  # noqa: B018 (asked now, so that a bad declaration fails the load, not the first test)
        except CapabilitiesError as exc:
            raise CapabilitiesError(f"{exc} (adapter loaded from {self.target})") from None
        except Exception as exc:  # capabilities() is the plug-in's code
            raise AdapterError(f"adapter {self.name!r}: {self.target}.capabilities() raised {type(exc).__name__}: {exc}") from None
        return obj

    def _raise_if_missing(self, requires: tuple[str, ...]) -> None:
        if isinstance(requires, str) or not all(isinstance(r, str) for r in requires):
            raise AdapterError(f"adapter {self.name!r}: requires must be a tuple of import names, got {requires!r}")
        for name in requires:
            if not all(part.isidentifier() for part in name.split(".")):
                raise AdapterError(
                    f"adapter {self.name!r}: requires holds {name!r}, which is not an import name; give the name `import` takes "
                    "(mlx.core), not the distribution's (mlx-cpu)"
                )
        missing = [module for module in requires if not _installed(module)]
        if missing:
            raise AdapterUnavailable(f"skipped: {', '.join(missing)} not installed (needed by adapter {self.name!r})")

    @property
    def requested_as(self) -> str:
        """How to name this adapter again on a command line (``--conformance-backend``): a built-in's or installed
        plug-in's name, else its ``module:attribute``."""
        return self.name if self.source == "built-in" or self.source.startswith("entry point") else self.target


def _installed(module: str) -> bool:
    """Whether ``module`` (a top-level name or a dotted one, ``mlx.core``) is importable, found without importing anything.

    A dotted name is looked up in its parents' directories rather than with :func:`importlib.util.find_spec`, which
    would import the parents. A namespace package -- a folder with no ``__init__.py`` -- counts only when a folder
    of it holds a module or a package: a wheel that installs a bare folder of libraries and headers (``mlx-cpu``
    installs ``mlx/lib``, ``mlx/include``) makes the name findable without giving Python anything to import.
    """
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    for depth in range(1, len(rest) + 1):
        if spec is None or spec.submodule_search_locations is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(".".join([top, *rest[:depth]]), list(spec.submodule_search_locations))
    return spec is not None and (not _is_namespace(spec) or _holds_python(spec.submodule_search_locations))


def _is_namespace(spec: importlib.machinery.ModuleSpec) -> bool:
    return spec.submodule_search_locations is not None and spec.origin in (None, "namespace")


def _holds_python(locations: Iterable[str]) -> bool:
    """Whether one of a namespace package's folders holds a module (``.py``, an extension module) or a regular package."""
    suffixes = tuple(importlib.machinery.all_suffixes())
    for location in locations:
        try:
            entries = list(Path(location).iterdir())
        except OSError:
            continue
        if any((e.name.endswith(suffixes) and e.is_file()) or (e / "__init__.py").is_file() for e in entries):
            return True
    return False


BUILTIN: dict[str, AdapterSpec] = {
    "torch": AdapterSpec("torch", "backprop_conformance.adapters.torch_adapter:TorchAdapter", "built-in", ("torch",)),
    "jax": AdapterSpec("jax", "backprop_conformance.adapters.jax_adapter:JaxAdapter", "built-in", ("jax",)),
    "tensorflow": AdapterSpec(
        "tensorflow", "backprop_conformance.adapters.tensorflow_adapter:TensorFlowAdapter", "built-in", ("tensorflow",)
    ),
    "keras": AdapterSpec("keras", "backprop_conformance.adapters.keras_adapter:KerasAdapter", "built-in", ("keras",)),
    "mlx": AdapterSpec("mlx", "backprop_conformance.adapters.mlx_adapter:MlxAdapter", "built-in", ("mlx.core",)),
    "flax": AdapterSpec("flax", "backprop_conformance.adapters.flax_adapter:FlaxAdapter", "built-in", ("flax.nnx", "jax")),
}


def entry_point_specs() -> dict[str, AdapterSpec]:
    """Adapters installed by other packages under :data:`ENTRY_POINT_GROUP`."""
    specs = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        specs[ep.name] = AdapterSpec(ep.name, ep.value, f"entry point of {ep.dist.name if ep.dist else 'an installed package'}")
    return specs


def known_specs() -> dict[str, AdapterSpec]:
    """Every adapter known by name: built-ins first, then plug-ins (a plug-in cannot shadow a built-in)."""
    specs = dict(entry_point_specs())
    specs.update(BUILTIN)
    return specs


def default_names() -> list[str]:
    """What a run tests when no backend is named: every built-in, then every installed plug-in.

    Plug-ins join a plain run because installing one is how a user says "test this framework"; a run
    that skipped the built-ins (frameworks not installed) and ignored the plug-in would be green having
    tested nothing.
    """
    return [*BUILTIN, *sorted(name for name in entry_point_specs() if name not in BUILTIN)]


def resolve(name: str) -> AdapterSpec:
    """The spec for a known adapter name or a ``module:attribute`` reference.

    Raises :class:`UnknownAdapter` listing the valid names when ``name`` is neither.
    """
    specs = known_specs()
    if name in specs:
        return specs[name]
    module_name, sep, attribute = name.partition(":")
    if sep and module_name and attribute and all(part.isidentifier() for part in [*module_name.split("."), attribute]):
        return AdapterSpec(attribute, name, "command line")
    raise UnknownAdapter(
        f"unknown adapter {name!r}; known adapters are {', '.join(sorted(specs))}, or name a third-party one as package.module:Attribute"
    )
