"""The adapter contract: how a framework is put on trial.

An adapter builds the page's sigmoid network with a framework's own building blocks, evaluates the
page's cost summed over the batch, and differentiates it with the framework's own machinery. It is a
small class; third parties write one to put their framework through the suite (see
``docs/adapters.md`` and :mod:`backprop_conformance.adapters.example_numpy`).

Contract, in short:

* Input: a :class:`~backprop_conformance.reference.model.Network` (parameters in page layout, numpy
  float64 arrays whose values are exactly representable in ``dtype``), a
  :class:`~backprop_conformance.reference.model.Batch`, a format name (``"float64"``, ``"float32"``,
  ``"float16"``, ``"bfloat16"``), an execution path and a device, all among the adapter's declared
  capabilities.
* Output: an :class:`AdapterOutput`: ∂C/∂w^l and ∂C/∂b^l as numpy arrays in page layout, in the
  requested format's carrier dtype (:data:`backprop_conformance.reference.dtypes.FORMATS`; bfloat16
  values are carried in float32 arrays), the cost, and the forward activations a^l (plus z^l and δ^l
  where the framework can give them) for diagnosis.
* No state between calls: the same input gives the same gradients (in particular, gradients must not
  accumulate from one call into the next).
* Importing the adapter's module must not import its framework; do that inside the methods, so that
  listing adapters never pays for, or fails on, a framework that is not used.

The shared work is the base class's, as in einops' ``AbstractBackend``: an adapter implements
:meth:`Adapter.capabilities`, :meth:`Adapter.load_parameters` and :meth:`Adapter.run`, and everyone
else calls :meth:`Adapter.compute` and :meth:`Adapter.round_trip`, which check the request against
the declared capabilities before the adapter sees it and the output against the contract after. So a
third-party adapter gets every check for free, and no adapter writes them again.

The two sides share one class, so their names are kept apart: the methods an adapter writes are
:data:`PLUGIN_METHODS`, the suite's are :data:`SUITE_METHODS`, and a subclass that defines one of the
suite's (an adapter written against an earlier interface, whose own helper was called ``compute``) is
refused when its class is created, with an error that names the method, rather than failing every
example later with an argument error. The interface is versioned (:data:`PLUGIN_INTERFACE`).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from backprop_conformance.adapters.dispatch import Level
from backprop_conformance.reference.dtypes import FORMATS, MIXED, float_format, holds_only, is_representable, round_to
from backprop_conformance.reference.error_bound import Precision
from backprop_conformance.reference.mixed_precision import MixedPolicy, PolicyError
from backprop_conformance.reference.model import Batch, Gradients, Network, check_compatible, parameter_name

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
"""Names, paths and devices become parts of test ids and of case-file names (``<name>-<path>-<dtype>-<hash>.json``):
letters, digits and ``_ . + -``, at most 64 characters, never ``..`` and never a path separator, so that
no adapter can make the suite write outside ``--conformance-case-dir``."""

OPERATIONS = ("dot", "batch_sum", "cost_sum")
"""The sums whose accumulation format an adapter can declare one by one (see :attr:`Capabilities.accumulation`):
the matrix products (z^l, (w^{l+1})ᵀδ^{l+1} and the weight gradient's δᵀa), the bias gradient's sum over
the batch, and the cost's sum over the batch and the outputs."""


class AdapterError(Exception):
    """An adapter that cannot be used as written: bad capabilities, a constructor that raised, ...

    The message names the adapter and the cause; the suite reports it as a usage error (exit status 4),
    never as a skip and never as a verdict about the framework.
    """


class PluginInterfaceError(AdapterError, TypeError):
    """An adapter class that does not fit the plug-in interface: it defines one of :data:`SUITE_METHODS`, or states an
    interface version this suite does not offer. Raised when the class is created, so at load time."""


class CapabilitiesError(AdapterError, ValueError):
    """:meth:`Adapter.capabilities` declared something the suite cannot test; the message says what and what is allowed."""


class RequestError(ValueError):
    """A request outside what the adapter declared (dtype, path, device) or inputs it cannot take as given."""


class AdapterContractError(AssertionError):
    """An adapter broke the contract of this module; the message says where and how."""


PLUGIN_INTERFACE = 2
"""The version of the plug-in interface: what :class:`Adapter` asks of a subclass and offers it.

It changes when a change would break an adapter written against the previous one: a method an adapter
writes changes its signature or meaning, or a name becomes the suite's (version 2 added ``load_parameters``
and gave the suite :data:`SUITE_METHODS`, ``compute`` among them).
A plug-in may state the version it was written for in :attr:`Adapter.plugin_interface`; one that states
another is refused at load with the reason (docs/adapters.md, "Interface versions")."""

SUPPORTED_INTERFACES: tuple[int, ...] = (PLUGIN_INTERFACE,)
"""The interface versions this suite can load adapters written for."""

PLUGIN_METHODS: tuple[str, ...] = ("capabilities", "load_parameters", "run", "dispatch", "use_cache", "prepare", "finish")
"""The methods a plug-in author writes: the first three always, the rest where the framework has something to say."""

SUITE_METHODS: tuple[str, ...] = ("caps", "where", "check_request", "compute", "round_trip")
"""The names the suite owns and calls itself, with its own arguments; an adapter class must not define any of them."""


def check_plugin_class(cls: type) -> None:
    """Raise :class:`PluginInterfaceError` unless ``cls`` leaves :data:`SUITE_METHODS` alone and states a supported interface.

    Only names ``cls`` itself defines are checked (its bases were checked when they were created), so the message
    names the class that wrote the name.
    """
    where = f"{cls.__module__}.{cls.__qualname__}"
    for name in SUITE_METHODS:
        if name in vars(cls):
            raise PluginInterfaceError(
                f"{where} defines {name!r}, a name the suite owns: the suite calls Adapter.{name} itself, with its own "
                f"arguments, so an adapter's own {name} would be called in its place. Rename the adapter's helper (for "
                f"instance to _{name}). An adapter writes {', '.join(PLUGIN_METHODS)}; the suite owns "
                f"{', '.join(SUITE_METHODS)} (docs/adapters.md, plug-in interface {PLUGIN_INTERFACE})"
            )
    if "plugin_interface" in vars(cls):
        stated = vars(cls)["plugin_interface"]
        if isinstance(stated, bool) or stated not in SUPPORTED_INTERFACES:
            raise PluginInterfaceError(
                f"{where} states plugin_interface = {stated!r}, but this suite offers plug-in interface "
                f'{", ".join(map(str, SUPPORTED_INTERFACES))}; update the adapter to it (docs/adapters.md, "Interface '
                'versions", says what changed) and state the version it now follows'
            )


def _check_frameworks(adapter: str, frameworks: object) -> dict[str, str]:
    """``frameworks`` as a dict of framework name → version, both non-empty strings, names safe as in ``name``."""
    if not isinstance(frameworks, Mapping):
        raise CapabilitiesError(
            f"adapter {adapter!r}: frameworks must be a mapping of framework name to version, e.g. {{'jax': jax.__version__}}, "
            f"got {type(frameworks).__name__}"
        )
    for key, version in frameworks.items():
        if not isinstance(key, str) or not SAFE_NAME.fullmatch(key) or ".." in key:
            raise CapabilitiesError(f"adapter {adapter!r}: frameworks has the name {key!r}; names are letters, digits and _ . + -")
        if not isinstance(version, str) or not version:
            raise CapabilitiesError(f"adapter {adapter!r}: frameworks[{key!r}] must be a non-empty version string, got {version!r}")
    return dict(frameworks)


def _check_names(adapter: str, what: str, value: object, *, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise CapabilitiesError(
            f"adapter {adapter!r}: {what} must be a tuple of strings, got {type(value).__name__} {value!r}"
            + (f" (write ({value!r},) for one)" if isinstance(value, str) else "")
        )
    if not value and not allow_empty:
        raise CapabilitiesError(f"adapter {adapter!r}: {what} is empty; declare at least one")
    for item in value:
        if not isinstance(item, str) or not SAFE_NAME.fullmatch(item) or ".." in item:
            raise CapabilitiesError(
                f"adapter {adapter!r}: {what} holds {item!r}; names are letters, digits and _ . + - "
                f"(at most 64, no '..', no '/'), since they become parts of file names"
            )
    if len(set(value)) != len(value):
        raise CapabilitiesError(f"adapter {adapter!r}: {what} lists a name twice: {list(value)}")
    return tuple(value)


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can be asked to do; the suite generates one test cell per (path, dtype, device).

    Validated when it is built: a declaration the suite could not honour (no paths, an unknown dtype, a
    default path that is not a path, accumulation coarser than storage, a name that is not safe in a
    file name) raises :class:`CapabilitiesError`, which the suite reports as a usage error naming the
    adapter before any test runs. See docs/adapters.md for a table of the fields.

    Attributes:
        name: the adapter's short name, used in test ids, case-file names and on the command line.
        framework: the framework's display name ("PyTorch").
        version: the framework's version string, recorded in reports and reproducers; known defects
            are matched against it.
        dtypes: format names the adapter supports, from :data:`backprop_conformance.reference.dtypes.FORMATS`, and
            mixed-precision policies (:data:`~backprop_conformance.reference.dtypes.MIXED`: ``mixed-bfloat16``), each
            with its per-operation formats in :attr:`policies`.
        paths: every execution path it supports ("eager", "jit", ...).
        default_paths: the paths run when the user does not ask for specific ones; a slow path
            (e.g. ``torch.compile``) is supported but opt-in by leaving it out of this tuple.
        devices: devices it can run on ("cpu", "cuda", ...).
        accumulation: for a dtype, the format its sums accumulate in: one format name for every sum
            (float16 on CPU accumulates in float32 in both torch and jax), or a mapping from the
            operations in :data:`OPERATIONS` to format names, for a framework whose matrix products
            accumulate in float32 while it sums the bias gradient in float16. A dtype or operation not
            named accumulates in the dtype itself. Never coarser than the dtype: a declaration may
            describe a framework, never loosen the bound it is judged by.
        shape_compiled_paths: the paths that compile anew for every new shape (``jax.jit``,
            ``torch.compile``); the suite draws their shapes from a pool so that a run pays for a
            bounded number of compilations, and every other path draws shapes freely.
        environment: names of environment variables that select what the framework computes with
            (``KERAS_BACKEND``, ``XLA_FLAGS``); their values are recorded in case files and printed on
            replay, since a replay under other values would test something else.
        ranks: for a data-parallel path, the number R of processes or devices whose partial gradients
            it combines (torch's ``ddp``: 2 by default); the bound charges that combination
            (:func:`~backprop_conformance.reference.error_bound.cross_rank_reduction_bound`). A path not
            named runs in one piece.
        levels: for a path, the dispatch levels this CPU can force its framework into
            (:class:`~backprop_conformance.adapters.dispatch.Level`: ATen's CPU capabilities, TensorFlow's oneDNN
            on and off, XLA's ISA caps), which ``--conformance-dispatch`` tests in worker processes. A path not
            named runs only at the level of the process that tests it.
        device_dtypes: for a device whose formats differ from :attr:`dtypes`, the ones it supports there (a subset
            of :attr:`dtypes`): ``{"cuda": ("float32", "float16", "bfloat16")}`` for a framework whose float64 runs on
            the CPU only. A device not named supports every one of :attr:`dtypes`.
        path_dtypes: for a path that runs only some of :attr:`dtypes`, those (a subset): torch's ``grad-scaler``, whose
            ``GradScaler`` refuses to unscale float16 and bfloat16 parameters' gradients, runs the formats whose
            parameters are float32 or wider and the mixed-precision policies. A path not named runs every one.
        micro_batch_paths: the paths that accumulate gradients over micro-batches (torch's ``accumulate``): they split
            the batch as :attr:`~backprop_conformance.reference.model.Batch.micro_batches` says (in one piece when it is
            None), the suite draws k and the split for them, and the bound charges the k − 1 additions of the partial
            sums (:func:`~backprop_conformance.reference.error_bound.micro_batch_accumulation_bound`).
        per_example_paths: the paths that compute each example's own gradient and sum the B of them (``vmap(grad)``):
            the bound charges that sum as B partial sums, and the per-example gradients the path returns
            (:attr:`AdapterOutput.per_example`) are judged too, each against the reference of its one example.
        layer_scan_paths: the paths that run the hidden layers as a scan over stacked weights (``lax.scan``), which
            needs every hidden layer of one width: the suite draws only networks n(1), h, ..., h, n(L) with L ≥ 3 for
            them (:func:`~backprop_conformance.conformance.strategies.equal_hidden`), its covering design and shape
            pool mapped to that form, and the path may refuse any other network.
        frameworks: for an adapter that wraps other frameworks (Flax runs on JAX), their names and the versions
            in use (``{"jax": jax.__version__}``). A known-defect entry with ``framework = "jax"`` is matched
            against this version instead of :attr:`version`: a wrapper's defect usually lives underneath.
        policies: for each mixed-precision policy among :attr:`dtypes`, the format of every operation
            (:class:`~backprop_conformance.reference.mixed_precision.MixedPolicy`, or a mapping operation → format that
            :meth:`MixedPolicy.of <backprop_conformance.reference.mixed_precision.MixedPolicy.of>` completes with the
            compute format). The bound of the policy's cells follows these formats operation by operation; each lies
            between storage (float32) and the compute format, so a declaration can describe a framework but never
            loosen its bound beyond the policy's name.
        default_dtypes: the dtypes run when the user names none (``--conformance-dtype``); None runs every one. The
            built-in adapters leave their mixed-precision policies out, so that they are opt-in as a slow path is.
    """

    name: str
    framework: str
    version: str
    dtypes: tuple[str, ...]
    paths: tuple[str, ...]
    default_paths: tuple[str, ...]
    devices: tuple[str, ...] = ("cpu",)
    accumulation: Mapping[str, str | Mapping[str, str]] = field(default_factory=dict)
    shape_compiled_paths: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    ranks: Mapping[str, int] = field(default_factory=dict)
    levels: Mapping[str, tuple[Level, ...]] = field(default_factory=dict)
    device_dtypes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    path_dtypes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    frameworks: Mapping[str, str] = field(default_factory=dict)
    policies: Mapping[str, MixedPolicy | Mapping[str, str]] = field(default_factory=dict)
    default_dtypes: tuple[str, ...] | None = None
    micro_batch_paths: tuple[str, ...] = ()
    per_example_paths: tuple[str, ...] = ()
    layer_scan_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SAFE_NAME.fullmatch(self.name) or ".." in self.name:
            raise CapabilitiesError(
                f"adapter name {self.name!r} is not usable: names are letters, digits and _ . + - "
                "(at most 64, no '..', no '/'), since they key test ids and case-file names"
            )
        name = self.name
        for attribute in ("framework", "version"):
            value = getattr(self, attribute)
            if not isinstance(value, str) or not value:
                raise CapabilitiesError(f"adapter {name!r}: {attribute} must be a non-empty string, got {value!r}")
        dtypes = _check_names(name, "dtypes", self.dtypes)
        unknown = [d for d in dtypes if d not in FORMATS and d not in MIXED]
        if unknown:
            raise CapabilitiesError(
                f"adapter {name!r}: unknown dtype {', '.join(map(repr, unknown))}; the suite knows {', '.join(FORMATS)} "
                f"and the mixed-precision policies {', '.join(MIXED)}"
            )
        paths = _check_names(name, "paths", self.paths)
        defaults = _check_names(name, "default_paths", self.default_paths, allow_empty=True)
        stray = [p for p in defaults if p not in paths]
        if stray:
            raise CapabilitiesError(f"adapter {name!r}: default path {', '.join(map(repr, stray))} is not among its paths {list(paths)}")
        compiled = _check_names(name, "shape_compiled_paths", self.shape_compiled_paths, allow_empty=True)
        stray = [p for p in compiled if p not in paths]
        if stray:
            raise CapabilitiesError(f"adapter {name!r}: shape-compiled path {', '.join(map(repr, stray))} is not among its paths")
        accumulating = {}
        for attribute in ("micro_batch_paths", "per_example_paths", "layer_scan_paths"):
            accumulating[attribute] = _check_names(name, attribute, getattr(self, attribute), allow_empty=True)
            stray = [p for p in accumulating[attribute] if p not in paths]
            if stray:
                raise CapabilitiesError(
                    f"adapter {name!r}: {attribute} names {', '.join(map(repr, stray))}, not among its paths {list(paths)}"
                )
        both = set(accumulating["micro_batch_paths"]) & set(accumulating["per_example_paths"])
        if both:
            raise CapabilitiesError(
                f"adapter {name!r}: path {sorted(both)[0]!r} is declared both a micro-batch and a per-example path; a path sums its "
                "batch one way"
            )
        devices = _check_names(name, "devices", self.devices)
        environment = self.environment
        if isinstance(environment, str) or not isinstance(environment, (tuple, list)):
            raise CapabilitiesError(f"adapter {name!r}: environment must be a tuple of variable names, got {environment!r}")
        if not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in environment):
            raise CapabilitiesError(f"adapter {name!r}: environment holds something that is not a variable name: {list(environment)}")
        accumulation = _check_accumulation(name, dtypes, self.accumulation)
        ranks = _check_ranks(name, paths, self.ranks)
        levels = _check_levels(name, paths, self.levels)
        device_dtypes = _check_dtype_subsets(name, "device_dtypes", "device", devices, dtypes, self.device_dtypes)
        path_dtypes = _check_dtype_subsets(name, "path_dtypes", "path", paths, dtypes, self.path_dtypes)
        frameworks = _check_frameworks(name, self.frameworks)
        policies = _check_policies(name, dtypes, self.policies)
        default_dtypes = dtypes if self.default_dtypes is None else _check_names(name, "default_dtypes", self.default_dtypes)
        stray = [d for d in default_dtypes if d not in dtypes]
        if stray:
            raise CapabilitiesError(f"adapter {name!r}: default dtype {', '.join(map(repr, stray))} is not among its dtypes {list(dtypes)}")
        for attribute, value in (
            ("dtypes", dtypes),
            ("paths", paths),
            ("default_paths", defaults),
            ("shape_compiled_paths", compiled),
            ("devices", devices),
            ("environment", tuple(environment)),
            ("accumulation", accumulation),
            ("ranks", ranks),
            ("levels", levels),
            ("device_dtypes", device_dtypes),
            ("path_dtypes", path_dtypes),
            ("frameworks", frameworks),
            ("policies", policies),
            ("default_dtypes", default_dtypes),
            ("micro_batch_paths", accumulating["micro_batch_paths"]),
            ("per_example_paths", accumulating["per_example_paths"]),
            ("layer_scan_paths", accumulating["layer_scan_paths"]),
        ):
            object.__setattr__(self, attribute, value)

    def accumulation_of(self, dtype: str, operation: str = "dot") -> str:
        """The format ``operation``'s sums of ``dtype`` values accumulate in: as declared, else the dtype itself."""
        declared = self.accumulation.get(dtype, dtype)
        return declared if isinstance(declared, str) else declared.get(operation, dtype)

    def dtypes_on(self, device: str) -> tuple[str, ...]:
        """The formats the adapter supports on ``device``: :attr:`device_dtypes`' entry for it, else every one."""
        return self.device_dtypes.get(device, self.dtypes)

    def dtypes_of_path(self, path: str) -> tuple[str, ...]:
        """The formats ``path`` runs: :attr:`path_dtypes`' entry for it, else every one of :attr:`dtypes`."""
        return self.path_dtypes.get(path, self.dtypes)

    def ranks_of(self, path: str) -> int:
        """R, the number of data-parallel ranks ``path`` combines (1 unless declared in :attr:`ranks`)."""
        return self.ranks.get(path, 1)

    def in_one_piece(self, path: str) -> bool:
        """True unless ``path`` makes its sums over the batch from partial sums: data-parallel ranks, micro-batches or
        per-example gradients (what a mixed-precision policy's bound does not model)."""
        return self.ranks_of(path) == 1 and path not in self.micro_batch_paths and path not in self.per_example_paths

    def partial_sums(self, path: str | None, batch: Batch) -> int:
        """k, the number of partial sums ``path`` adds to make each sum over ``batch``: its micro-batches on a
        :attr:`micro_batch_paths` path, its B examples on a :attr:`per_example_paths` path, else 1 (the bound of a
        data-parallel path charges its ranks apart, :meth:`ranks_of`)."""
        if path in self.micro_batch_paths:
            return len(batch.micro_batches or (batch.size,))
        if path in self.per_example_paths:
            return batch.size
        return 1

    def levels_of(self, path: str) -> tuple[Level, ...]:
        """The dispatch levels declared for ``path`` (none: it runs only at the level of the process testing it)."""
        return self.levels.get(path, ())

    def precision(self, dtype: str, path: str | None = None) -> Precision | MixedPolicy:
        """The rounding constants the error bound charges this adapter for ``dtype`` on ``path`` (storage, accumulation, ranks).

        ``path`` matters only for a data-parallel path; None is a computation in one piece. For a mixed-precision
        policy, its declared :class:`~backprop_conformance.reference.mixed_precision.MixedPolicy`.
        """
        if dtype in self.policies:
            return self.policies[dtype]
        ranks = 1 if path is None else self.ranks_of(path)
        key = (dtype, ranks)
        if key not in self._precisions:  # asked once per example; Precision is immutable, so one object serves them all
            accumulation = {op: self.accumulation_of(dtype, op) for op in OPERATIONS}
            self._precisions[key] = Precision.of(dtype, accumulation, ranks=ranks)
        return self._precisions[key]

    @cached_property
    def _precisions(self) -> dict[tuple[str, int], Precision]:
        return {}

    def describe_accumulation(self) -> str:
        """The declared accumulation in one phrase for the run's header and report, e.g. ``float16→float32``."""
        parts = []
        for dtype in self.dtypes:
            if dtype in self.policies:
                continue
            formats = {op: self.accumulation_of(dtype, op) for op in OPERATIONS}
            if set(formats.values()) == {dtype}:
                continue
            if len(set(formats.values())) == 1:
                parts.append(f"{dtype}→{formats['dot']}")
            else:
                parts.append(f"{dtype}→" + "/".join(f"{op} {fmt}" for op, fmt in formats.items()))
        return ", ".join(parts) or "in storage format"

    def describe_policies(self) -> list[str]:
        """One line per declared mixed-precision policy for the run's header and report: ``mixed-bfloat16: float32 storage; ...``."""
        return [f"{name}: {policy.describe()}" for name, policy in self.policies.items()]


def _check_policies(name: str, dtypes: tuple[str, ...], declared: object) -> Mapping[str, MixedPolicy]:
    """Validate :attr:`Capabilities.policies`: one policy for each mixed dtype and none for another; return them built."""
    if not isinstance(declared, Mapping):
        raise CapabilitiesError(f"adapter {name!r}: policies must be a mapping from policy name to formats, got {type(declared).__name__}")
    stray = [p for p in declared if p not in dtypes]
    if stray:
        raise CapabilitiesError(f"adapter {name!r}: policies names {', '.join(map(repr, stray))}, not among its dtypes {list(dtypes)}")
    missing = [d for d in dtypes if d in MIXED and d not in declared]
    if missing:
        raise CapabilitiesError(
            f"adapter {name!r}: dtype {', '.join(map(repr, missing))} is a mixed-precision policy; declare the format of each "
            "operation in Capabilities.policies (reference/mixed_precision.py lists them)"
        )
    built: dict[str, MixedPolicy] = {}
    for policy_name, policy in declared.items():
        try:
            if isinstance(policy, MixedPolicy):
                if policy.name != policy_name:
                    raise PolicyError(f"policies[{policy_name!r}] is the policy {policy.name!r}")
                built[policy_name] = policy
            elif isinstance(policy, Mapping):
                built[policy_name] = MixedPolicy.of(policy_name, **dict(policy))
            else:
                raise PolicyError(f"policies[{policy_name!r}] must be a MixedPolicy or a mapping operation -> format, got {policy!r}")
        except PolicyError as exc:
            raise CapabilitiesError(f"adapter {name!r}: {exc}") from None
    return built


def _check_accumulation(name: str, dtypes: tuple[str, ...], accumulation: object) -> Mapping[str, str | Mapping[str, str]]:
    """Validate ``accumulation`` (see :class:`Capabilities`) and return a frozen copy.

    A format is coarser than another when its unit roundoff is larger: float32 accumulation for float64
    storage would multiply the bound by 2^29 and let a 1e-9 relative bug pass, so it is refused.
    """
    if not isinstance(accumulation, Mapping):
        raise CapabilitiesError(f"adapter {name!r}: accumulation must be a mapping from dtype to format, got {type(accumulation).__name__}")
    frozen: dict[str, str | Mapping[str, str]] = {}
    for dtype, declared in accumulation.items():
        if dtype not in dtypes:
            raise CapabilitiesError(f"adapter {name!r}: accumulation names dtype {dtype!r}, which is not among its dtypes {list(dtypes)}")
        if dtype in MIXED:
            raise CapabilitiesError(
                f"adapter {name!r}: accumulation names the mixed-precision policy {dtype!r}; declare its sums in Capabilities.policies"
            )
        if isinstance(declared, str):
            per_op = dict.fromkeys(OPERATIONS, declared)
            frozen[dtype] = declared
        elif isinstance(declared, Mapping):
            unknown = [op for op in declared if op not in OPERATIONS]
            if unknown:
                raise CapabilitiesError(
                    f"adapter {name!r}: accumulation of {dtype} names operation {', '.join(map(repr, unknown))}; "
                    f"the operations are {', '.join(OPERATIONS)}"
                )
            per_op = dict(declared)
            frozen[dtype] = dict(declared)
        else:
            raise CapabilitiesError(
                f"adapter {name!r}: accumulation of {dtype} must be a format name or a mapping operation -> format, got {declared!r}"
            )
        for op, fmt in per_op.items():
            if not isinstance(fmt, str) or fmt not in FORMATS:
                raise CapabilitiesError(
                    f"adapter {name!r}: accumulation of {dtype} ({op}) is {fmt!r}; the formats are {', '.join(FORMATS)}"
                )
            if FORMATS[fmt].u > FORMATS[dtype].u:
                raise CapabilitiesError(
                    f"adapter {name!r}: declares {op} sums of {dtype} accumulated in {fmt}, coarser than {dtype} itself; "
                    "a declaration may not loosen the bound (accumulation must be at least as precise as storage)"
                )
    return frozen


RESERVED_LEVELS = ("native", "all")
"""What ``--conformance-dispatch`` means by itself: the process's own level, and every declared level."""

MAX_RANKS = 1024
"""The most data-parallel ranks a path may declare; more is a typo, and would mean as many processes."""


def _check_dtype_subsets(
    name: str, attribute: str, what: str, keys: tuple[str, ...], dtypes: tuple[str, ...], declared: object
) -> Mapping[str, tuple[str, ...]]:
    """Validate ``device_dtypes`` or ``path_dtypes`` (see :class:`Capabilities`): each key a declared device (path), each
    value a non-empty subset of the declared dtypes; return a frozen copy."""
    if not isinstance(declared, Mapping):
        raise CapabilitiesError(f"adapter {name!r}: {attribute} must be a mapping from {what} to dtypes, got {type(declared).__name__}")
    frozen: dict[str, tuple[str, ...]] = {}
    for key, formats in declared.items():
        if key not in keys:
            raise CapabilitiesError(f"adapter {name!r}: {attribute} names {what} {key!r}, which is not among its {what}s {list(keys)}")
        chosen = _check_names(name, f"{attribute}[{key!r}]", formats)
        stray = [d for d in chosen if d not in dtypes]
        if stray:
            raise CapabilitiesError(
                f"adapter {name!r}: {attribute}[{key!r}] names {', '.join(map(repr, stray))}, not among its dtypes {list(dtypes)}"
            )
        frozen[key] = chosen
    return frozen


def _check_ranks(name: str, paths: tuple[str, ...], ranks: object) -> Mapping[str, int]:
    """Validate :attr:`Capabilities.ranks` and return a frozen copy: known paths, whole numbers 1..MAX_RANKS."""
    if not isinstance(ranks, Mapping):
        raise CapabilitiesError(f"adapter {name!r}: ranks must be a mapping from path to a number of ranks, got {type(ranks).__name__}")
    frozen: dict[str, int] = {}
    for path, count in ranks.items():
        if path not in paths:
            raise CapabilitiesError(f"adapter {name!r}: ranks names path {path!r}, which is not among its paths {list(paths)}")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_RANKS:
            raise CapabilitiesError(f"adapter {name!r}: ranks of path {path!r} is {count!r}; give a whole number from 1 to {MAX_RANKS}")
        frozen[path] = count
    return frozen


def _check_levels(name: str, paths: tuple[str, ...], levels: object) -> Mapping[str, tuple[Level, ...]]:
    """Validate ``levels`` (see :class:`Capabilities`): known paths, :class:`Level` values, safe and distinct names."""
    if not isinstance(levels, Mapping):
        raise CapabilitiesError(f"adapter {name!r}: levels must be a mapping from path to a tuple of Level, got {type(levels).__name__}")
    frozen: dict[str, tuple[Level, ...]] = {}
    for path, declared in levels.items():
        if path not in paths:
            raise CapabilitiesError(f"adapter {name!r}: levels names path {path!r}, which is not among its paths {list(paths)}")
        if isinstance(declared, Level) or not isinstance(declared, (tuple, list)) or not all(isinstance(v, Level) for v in declared):
            raise CapabilitiesError(
                f"adapter {name!r}: levels of path {path!r} must be a tuple of "
                f"backprop_conformance.adapters.dispatch.Level, got {declared!r}"
            )
        _check_names(name, f"the level names of path {path!r}", [level.name for level in declared], allow_empty=True)
        reserved = [level.name for level in declared if level.name in RESERVED_LEVELS]
        if reserved:
            raise CapabilitiesError(
                f"adapter {name!r}: level name {reserved[0]!r} of path {path!r} is reserved ({', '.join(RESERVED_LEVELS)} "
                "select levels on the command line); choose another"
            )
        for level in declared:
            bad = [k for k in (*level.environment, *level.setting) if not isinstance(k, str) or not k]
            values = [*level.environment.values(), *level.setting.values()]
            if bad or not all(isinstance(v, str) for v in values) or not level.setting:
                raise CapabilitiesError(
                    f"adapter {name!r}: level {level.name!r} of path {path!r} needs string environment variables and a non-empty "
                    "setting of string keys and values (the configuration it forces)"
                )
        if declared:
            frozen[path] = tuple(declared)
    return frozen


@dataclass(frozen=True)
class AdapterOutput:
    """What one adapter call returns, keyed by the page's layer number l.

    ``gradients.w[l]`` has shape (n(l), n(l−1)), ``gradients.b[l]`` shape (n(l),), both in the
    requested format's carrier dtype. ``a`` (l = 1..L), ``z`` and ``delta`` (l = 2..L) are per
    example, shape (B, n(l)), or None where the framework cannot expose them. They must come from
    the same computation as the gradients: read from a second one, they may describe a different
    computation, and the diagnosis "first divergence" would then mislead.

    ``per_example``, on a path of :attr:`Capabilities.per_example_paths`, holds each example's own gradient before
    the sum, with a leading axis of the B examples: ``per_example.w[l]`` of shape (B, n(l), n(l−1)), ``.b[l]`` of
    shape (B, n(l)), in the carrier dtype; the suite judges each against the reference of its one example.
    """

    gradients: Gradients
    cost: float
    a: Mapping[int, np.ndarray] | None = None
    z: Mapping[int, np.ndarray] | None = None
    delta: Mapping[int, np.ndarray] | None = None
    per_example: Gradients | None = None
    loss_scale: float | None = None

    def check(self, where: str, network: Network, batch: Batch, dtype: str) -> None:
        """Raise :class:`AdapterContractError` unless this output has the contract's keys, shapes and dtypes."""
        check_output(where, network, batch, dtype, self)


class Adapter(abc.ABC):
    """Base class of every adapter (built-in or third-party).

    Subclasses set :attr:`requires` to the import names of what they need, so that a missing
    framework is reported as a skip with a reason without importing anything, and implement
    :meth:`capabilities`, :meth:`load_parameters` and :meth:`run`. Callers use :meth:`compute` and
    :meth:`round_trip`, which do the checks every adapter needs.
    """

    requires: ClassVar[tuple[str, ...]] = ()
    plugin_interface: ClassVar[int] = PLUGIN_INTERFACE
    """The plug-in interface version the adapter was written for (:data:`PLUGIN_INTERFACE`); optional to state."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Check every subclass as it is created, so that a name clash is a load-time error naming the method."""
        super().__init_subclass__(**kwargs)
        check_plugin_class(cls)

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Declare name, version, dtypes, paths, devices and accumulation formats."""

    @abc.abstractmethod
    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the framework's model from ``network`` and read its parameters back in page layout.

        The suite checks that this round trip is the identity: a layout transposed on the way in is
        invisible in the shapes of a square layer and would otherwise show only as wrong gradients.
        """

    @abc.abstractmethod
    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """Compute the gradients of C = Σ_x 1/2 Σ_j (y_j − a^L_j)² with the framework."""

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The configuration that picks ``path``'s kernels in this process, as the framework itself reports it.

        Keys are dotted names (:data:`~backprop_conformance.adapters.dispatch.FRAMEWORK_KEYS` for the built-ins:
        ``{"torch.cpu_capability": "avx512"}``), values strings. The suite asks once per cell and level, records the
        answer in the report and case files, and matches known-defect entries limited to a configuration against it.
        Ask the framework, not the environment: a variable says what was requested, the framework what it did. The
        default reports nothing beyond the machine's own record (CPU and numpy), which the suite adds itself.
        """
        return {}

    def use_cache(self, directory: Path) -> str | None:
        """Offered by a suite run: a directory that persists between runs, for this adapter's own caches.

        An adapter whose framework can keep compiled programs on disk (JAX's persistent compilation cache)
        uses it so that repeated runs and CI runs with a cached directory compile little. Return a line for
        the run's header saying what was done (the setting may outlive the run in the process), or None;
        the default uses nothing. A cache must never change a result, only its cost.
        """
        return None

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """A hint from a suite run, before its first test: the cell (``path``, ``dtype``, ``device``) will be tested,
        and most of its examples will have these (widths, batch size) -- the shape pool, for a path declared in
        :attr:`Capabilities.shape_compiled_paths`; empty for a path that draws its shapes freely.

        An adapter may start, in the background, work those requests will need -- compiling the shapes, starting
        a worker process -- so that it overlaps the rest of the run instead of adding to it; on a 2-core machine
        the main thread leaves one core idle most of the time. The default does nothing. Whatever it starts must
        not change any result (a request computes exactly what it would have computed without the hint), must
        not raise (a failure belongs to the request that meets it), and must stop at :meth:`finish`.
        """
        return None

    def finish(self) -> None:
        """The run is over: drop whatever :meth:`prepare` queued and has not begun, and close the processes the run
        started (torch's ``ddp`` ranks). The default does nothing."""
        return None

    @cached_property
    def caps(self) -> Capabilities:
        """:meth:`capabilities`, asked once per adapter object and checked to be :class:`Capabilities`.

        Once, because declaring may be costly (``torch.cuda.is_available()`` initialises CUDA) and the
        answer must not change during a run.
        """
        caps = self.capabilities()
        if not isinstance(caps, Capabilities):
            raise CapabilitiesError(
                f"{type(self).__name__}.capabilities() returned a {type(caps).__name__}, "
                "expected backprop_conformance.adapters.base.Capabilities"
            )
        return caps

    def where(self, path: str | None, dtype: str) -> str:
        """How messages name a request: ``adapter 'torch', path 'eager', dtype float32``."""
        return f"adapter {self.caps.name!r}" + (f", path {path!r}" if path is not None else "") + f", dtype {dtype}"

    def check_request(self, network: Network, batch: Batch | None, *, dtype: str, path: str | None, device: str) -> None:
        """Raise :class:`RequestError` unless the request is among the declared capabilities and its values are ``dtype`` values.

        Unrepresentable values are refused because converting them would round silently, and the
        reference would then be judged at a different point from the one the framework computed.
        """
        caps = self.caps
        for what, value, valid in (("dtype", dtype, caps.dtypes), ("path", path, caps.paths), ("device", device, caps.devices)):
            if what == "path" and value is None:
                continue
            if value not in valid:
                raise RequestError(f"adapter {caps.name!r}: unsupported {what} {value!r}; valid {what}s are {', '.join(valid)}")
        if dtype not in caps.dtypes_on(device):
            raise RequestError(
                f"adapter {caps.name!r}: dtype {dtype!r} is not supported on {device!r}; there: {', '.join(caps.dtypes_on(device))}"
            )
        if path is not None and dtype not in caps.dtypes_of_path(path):
            raise RequestError(
                f"adapter {caps.name!r}: dtype {dtype!r} is not supported on path {path!r}; there: {', '.join(caps.dtypes_of_path(path))}"
            )
        if not isinstance(network, Network):
            raise RequestError(
                f"adapter {caps.name!r}: expected a backprop_conformance.reference.model.Network, got {type(network).__name__}"
            )
        arrays = [(f"w^{l}", network.w[l]) for l in network.layers] + [(f"b^{l}", network.b[l]) for l in network.layers]
        if batch is not None:
            if not isinstance(batch, Batch):
                raise RequestError(
                    f"adapter {caps.name!r}: expected a backprop_conformance.reference.model.Batch, got {type(batch).__name__}"
                )
            check_compatible(network, batch)
            arrays += [("x (the inputs)", batch.x), ("y (the targets)", batch.y)]
        # One check over every value first (a request is nearly always valid, and each check costs numpy's per-call
        # overhead more than its arithmetic), then array by array to name the one that is not, when one is not.
        held = [np.asarray(values) for _, values in arrays]
        if all(holds_only(dtype, v.dtype) for v in held):
            return  # no pass over the values: their dtypes hold nothing else (float64 for float64, nearly every request)
        if all(np.issubdtype(v.dtype, np.floating) for v in held) and is_representable(dtype, np.concatenate([v.ravel() for v in held])):
            return
        for what, values in arrays:
            if not is_representable(dtype, values):
                raise RequestError(
                    f"adapter {caps.name!r}: {what} holds values that are not exactly representable in {dtype}; round them first "
                    f"with backprop_conformance.reference.dtypes.round_to({dtype!r}, ...) so that the framework and the reference "
                    "see the same numbers"
                )

    def compute(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """:meth:`run`, with the request checked first and the output checked against the contract after."""
        self.check_request(network, batch, dtype=dtype, path=path, device=device)
        output = self.run(network, batch, dtype=dtype, path=path, device=device)
        check_output(self.where(path, dtype), network, batch, dtype, output)
        if dtype in self.caps.policies:
            check_policy_intermediates(self.where(path, dtype), self.caps.policies[dtype], output)
        return output

    def round_trip(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """:meth:`load_parameters`, with the request checked first and the result's type checked after."""
        self.check_request(network, None, dtype=dtype, path=None, device=device)
        back = self.load_parameters(network, dtype=dtype, device=device)
        if not isinstance(back, Network):
            raise AdapterContractError(
                f"{self.where(None, dtype)}: load_parameters() returned a {type(back).__name__}, "
                "expected backprop_conformance.reference.model.Network"
            )
        return back


def check_output(where: str, network: Network, batch: Batch, dtype: str, output: object) -> None:
    """Raise :class:`AdapterContractError` unless ``output`` has the contract's keys, shapes and dtypes.

    ``where`` names the request in messages (:meth:`Adapter.where`).
    """
    if not isinstance(output, AdapterOutput):
        raise AdapterContractError(
            f"{where}: run() returned a {type(output).__name__}, expected backprop_conformance.adapters.base.AdapterOutput"
        )
    if not isinstance(output.gradients, Gradients):
        raise AdapterContractError(
            f"{where}: AdapterOutput.gradients is a {type(output.gradients).__name__}, "
            "expected backprop_conformance.reference.model.Gradients"
        )
    carrier = float_format(dtype).carrier
    layers = list(network.layers)
    for kind, params, grads in (("w", network.w, output.gradients.w), ("b", network.b, output.gradients.b)):
        if sorted(grads) != layers:
            raise AdapterContractError(
                f"{where}: gradients of {kind}^l are keyed by {sorted(grads)}, expected the page's layers {layers} "
                f"(l = 2..L; a missing layer means a dropped gradient)"
            )
        for l in layers:
            name = f"∂C/∂{kind}^{l}"
            got = np.asarray(grads[l])
            want_shape = params[l].shape
            if got.shape != want_shape:
                layout = "(n(l), n(l−1)), row j = neuron j of layer l" if kind == "w" else "(n(l),)"
                transposed = " (transposed?)" if kind == "w" and got.shape == want_shape[::-1] else ""
                raise AdapterContractError(f"{where}: {name} has shape {got.shape}, expected {want_shape} = {layout}{transposed}")
            if got.dtype != carrier:
                mixed = (
                    f"; {dtype} returns gradients in its storage format {MIXED[dtype][0]}, the parameters' own, not in its compute "
                    f"format {MIXED[dtype][1]} (that is the gradient of the compute copy)"
                    if dtype in MIXED
                    else ""
                )
                raise AdapterContractError(
                    f"{where}: {name} has dtype {got.dtype}, expected {carrier} "
                    f"(the carrier of {dtype}, see backprop_conformance.reference.dtypes){mixed}"
                )
            if not is_representable(dtype, got):
                idx = _first_unrepresentable(dtype, got)
                raise AdapterContractError(
                    f"{where}: {name} holds {parameter_name(kind, l, idx)} = {got[idx]!r}, which is not a {dtype} value: "
                    f"the adapter returned higher-precision results than the format it was asked for"
                )
    if output.per_example is not None:
        _check_per_example(where, network, batch, carrier, output.per_example)
    if not isinstance(output.cost, (float, int, np.floating)) or isinstance(output.cost, bool):
        raise AdapterContractError(f"{where}: cost is a {type(output.cost).__name__}, expected a Python float")
    if output.loss_scale is not None:
        scale = output.loss_scale
        exact = isinstance(scale, (float, int, np.floating)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0
        if not exact or math.frexp(scale)[0] != 0.5:
            raise AdapterContractError(
                f"{where}: loss_scale is {scale!r}; a loss scale is a positive power of two (2^16), the only scales whose "
                "multiplication and division change no rounding"
            )
    B = batch.size
    widths = network.widths
    for symbol, values, first in (("a", output.a, 1), ("z", output.z, 2), ("δ", output.delta, 2)):
        if values is None:
            continue
        _check_intermediates(where, symbol, values, range(first, network.depth + 1), B, widths)


def check_policy_intermediates(where: str, policy: MixedPolicy, output: AdapterOutput) -> None:
    """Raise :class:`AdapterContractError` where a returned z^l or a^l is finer than the declared policy rounds it.

    A policy declared coarser than the framework computes would judge it by a looser bound than its arithmetic
    earns. The products' results (z^l, the ``matmul`` format) and the activations (a^l for l ≥ 2, the ``sigma``
    format) are what frameworks expose, so each returned one must be a value of its declared format: a z^l that is
    not a bfloat16 value where ``matmul`` is declared bfloat16 means the framework keeps it wider, and the
    declaration must say so.
    """
    for symbol, values, operation, first in (("z", output.z, "matmul", 2), ("a", output.a, "sigma", 2)):
        fmt = policy.formats[operation]
        for l, layer in sorted((values or {}).items()):
            arr = np.asarray(layer)
            if l >= first and np.issubdtype(arr.dtype, np.floating) and not is_representable(fmt, arr):
                idx = _first_unrepresentable(fmt, arr)
                raise AdapterContractError(
                    f"{where}: {symbol}^{l} holds {arr[idx]!r} (example {idx[0] + 1}), which is not a {fmt} value, yet the "
                    f"declared policy {policy.name} rounds {operation} to {fmt}: the framework computes wider than declared, "
                    f"and the declaration would loosen its bound; declare {operation} in the format it keeps"
                )


def _first_unrepresentable(dtype: str, values: np.ndarray) -> tuple[int, ...]:
    """Index of the first finite element that rounding to ``dtype`` would change."""
    as64 = values.astype(np.float64)
    changed = np.isfinite(as64) & (round_to(dtype, as64).astype(np.float64) != as64)
    return tuple(int(i) for i in np.argwhere(changed)[0])


def _check_intermediates(where: str, symbol: str, values: Mapping[int, np.ndarray], layers: range, B: int, widths: tuple[int, ...]) -> None:
    if not isinstance(values, Mapping):
        raise AdapterContractError(f"{where}: {symbol}^l must be a mapping keyed by the page's layer l, got {type(values).__name__}")
    unknown = sorted(set(values) - set(layers))
    if unknown:
        raise AdapterContractError(f"{where}: {symbol}^l has keys {unknown} outside the page's layers {list(layers)}")
    for l, arr in values.items():
        shape = np.shape(arr)
        if shape != (B, widths[l - 1]):
            raise AdapterContractError(f"{where}: {symbol}^{l} has shape {shape}, expected (B, n({l})) = ({B}, {widths[l - 1]})")


def _check_per_example(where: str, network: Network, batch: Batch, carrier: np.dtype, per_example: object) -> None:
    """Per-example gradients keyed by the page's layers, each with a leading axis of the B examples, in the carrier dtype."""
    if not isinstance(per_example, Gradients):
        raise AdapterContractError(f"{where}: AdapterOutput.per_example is a {type(per_example).__name__}, expected Gradients")
    for kind, params, grads in (("w", network.w, per_example.w), ("b", network.b, per_example.b)):
        if sorted(grads) != list(network.layers):
            raise AdapterContractError(
                f"{where}: per-example gradients of {kind}^l are keyed by {sorted(grads)}, expected {list(network.layers)}"
            )
        for l in network.layers:
            got = np.asarray(grads[l])
            want = (batch.size, *params[l].shape)
            if got.shape != want or got.dtype != carrier:
                raise AdapterContractError(
                    f"{where}: per-example ∂C_x/∂{kind}^{l} has shape {got.shape} and dtype {got.dtype}, expected {want} "
                    f"(B = {batch.size} examples first) and {carrier}"
                )
