"""A pickle reader for network snapshots that never runs code carried by the file.

`pickle.load` calls whatever functions and classes a file names, so a downloaded snapshot could run anything.
`SnapshotUnpickler` resolves only what network snapshots need:

- our own network classes (the modules in `SNAPSHOT_MODULES`) and torch's module containers,
- torch's tensor and storage rebuilding (storages are read with `torch.load(weights_only=True)`) and numpy's
  array, dtype and scalar rebuilding,
- plain containers (OrderedDict, set, `dnnlib.EasyDict`).

Two globals of the published research code are read as inert records instead of being called:

- `torch_utils.persistence._reconstruct_persistent_obj` (StyleGAN2-ADA, StyleGAN3 and CREPS PyTorch pickles).
  Its argument holds the source text of the module that defined the object, the class name, and the object's
  state (its `__dict__`: parameters, buffers, submodules, attributes and constructor arguments). The source is
  parsed with `ast`, never executed, to learn which classes it defines and their constructor defaults.
- `dnnlib.tflib.network.Network` (TensorFlow-era StyleGAN2 / StyleGAN2-ADA pickles): static kwargs, named
  variables and sub-networks.

Any other global is refused with `UnsafePickleError`, which names the file and the global, before anything
from the file runs.
"""

from __future__ import annotations

import ast
import collections
import functools
import importlib
import io
import operator
import pickle
from typing import Any, BinaryIO

import numpy as np
import torch

import dnnlib

# Our modules whose torch.nn.Module classes a snapshot may name. A class is accepted by any of these paths that
# holds it, as long as it is defined in one of them: snapshots written before the shared layers moved to
# training.layers name them `training.networks_stylegan2.FullyConnectedLayer` and so on.
SNAPSHOT_MODULES = (
    "training.layers",
    "training.generator",
    "training.networks_stylegan2",
    "training.networks_stylegan3",
    "training.networks_creps",
    "training.augment",
)

PERSISTENCE_GLOBAL = ("torch_utils.persistence", "_reconstruct_persistent_obj")
TF_NETWORK_GLOBAL = ("dnnlib.tflib.network", "Network")

# Classes of the published code that are pickled by reference (not through persistence), with the module path
# they were defined in. They are read as records; CREPS's input layer is the one the published networks use.
PUBLISHED_BY_REFERENCE = {("training.networks_creps", "SynthesisInput")}


class SnapshotError(ValueError):
    """A file that is not a network snapshot this toolkit can read; the message names the file and why."""


class UnsafePickleError(SnapshotError):
    """The pickle asks for a global outside the allowlist (which `pickle.load` would have imported and run)."""


def _load_storage(data: bytes) -> Any:
    """Rebuild a tensor storage pickled by `pickle.dump` of a tensor, without running code from the bytes."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _numpy_core(name: str) -> Any:
    """numpy's `_core.multiarray` object `name` (numpy 1 pickles say `numpy.core`, numpy 2 `numpy._core`)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return getattr(multiarray, name)


# Data-only globals: each rebuilds a value from plain arguments and calls nothing named by the file.
_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode(encoding),  # bytes in protocol-2 pickles
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dnnlib.util", "EasyDict"): dnnlib.EasyDict,
    ("dnnlib", "EasyDict"): dnnlib.EasyDict,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _DATA_GLOBALS[(_module, "_reconstruct")] = _numpy_core("_reconstruct")
    _DATA_GLOBALS[(_module, "scalar")] = _numpy_core("scalar")

# torch's pure containers; what they hold is resolved through the same allowlist.
_TORCH_CONTAINERS = {
    ("torch.nn.modules.container", name): getattr(torch.nn, name) for name in ("Sequential", "ModuleList", "ModuleDict")
}


# ----------------------------------------------------------------------------
# Records of published objects.


class ModuleRecord:
    """A published torch.nn.Module read as data: its pickled `__dict__` (parameters, buffers, submodules...)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Called by pickle's BUILD with the object's `__dict__`."""
        self.state = dict(state)

    @property
    def description(self) -> str:
        """How error messages name the class."""
        return type(self).__name__


class ReferencedRecord(ModuleRecord):
    """An object of a published class that was pickled by reference (module path and class name)."""

    module = ""
    name = ""

    @property
    def description(self) -> str:
        return f"{self.module}.{self.name}"


@functools.cache
def referenced_record_class(module: str, name: str) -> type[ReferencedRecord]:
    """A ReferencedRecord subclass standing for the published class `module.name`."""
    return type(name, (ReferencedRecord,), dict(module=module, name=name))


class PersistentRecord(ModuleRecord):
    """An object pickled by the published `torch_utils.persistence`: class name, source module and state."""

    def __init__(self, source: PublishedSource, class_name: str, state: dict[str, Any]):
        super().__init__()
        self.source = source
        self.class_name = class_name
        self.state = dict(state)

    @property
    def description(self) -> str:
        return f"{self.class_name} (published {self.source.family} code)"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """The constructor's arguments, positional ones named after the published signature."""
        kwargs = dict(self.state.get("_init_kwargs") or {})
        args = tuple(self.state.get("_init_args") or ())
        if args:
            names = self.source.parameter_names(self.class_name)
            if len(args) > len(names):
                raise SnapshotError(f"{self.description} was built with {len(args)} positional arguments")
            kwargs.update(zip(names, args, strict=False))
        return plain(kwargs)


class TFNetworkRecord:
    """A `dnnlib.tflib.network.Network` of the TensorFlow-era code, read as data (its build code is not run)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Called by pickle's BUILD with the dict the TensorFlow code's `__getstate__` wrote."""
        self.version = int(state.get("version", 0))
        self.name = str(state.get("name", ""))
        self.static_kwargs = plain(dict(state.get("static_kwargs") or {}))
        self.components = dict(state.get("components") or {})
        self.own_variables = [(str(name), np.asarray(value)) for name, value in state.get("variables") or []]

    def variables(self) -> dict[str, np.ndarray]:
        """All variables by local name, sub-networks' prefixed with their component name ('mapping/Dense0/weight')."""
        result = dict(self.own_variables)
        for prefix, component in self.components.items():
            if not isinstance(component, TFNetworkRecord):
                raise SnapshotError(f"TensorFlow network {self.name}: component {prefix} is not a network")
            result.update({f"{prefix}/{name}": value for name, value in component.variables().items()})
        return result


def plain(value: Any) -> Any:
    """EasyDicts and OrderedDicts as dicts, tuples as lists, numpy and torch numbers and arrays as Python numbers
    and lists, recursively."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic | torch.Tensor):
        return value.tolist()
    return value


def module_state(module: Any, name: str = "the network") -> dict[str, Any]:
    """The pickled `__dict__` of a record or a torch module (parameters, buffers, submodules, attributes)."""
    if isinstance(module, ModuleRecord):
        return module.state
    if isinstance(module, torch.nn.Module):
        return module.__dict__
    raise SnapshotError(f"{name} is a {type(module).__name__}, not a module")


def named_tensors(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The persistent parameters and buffers of a record or torch module tree, by qualified name."""
    state = module_state(module, prefix.rstrip(".") or "the network")
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is not None and name not in skipped:
                tensors[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            tensors.update(named_tensors(child, prefix + name + "."))
    return tensors


def find_submodule(module: Any, path: str) -> Any:
    """The record or module at dotted `path` below `module`, or None."""
    for part in path.split(".") if path else []:
        module = (module_state(module).get("_modules") or {}).get(part)
        if module is None:
            return None
    return module


def module_attributes(module: Any) -> dict[str, Any]:
    """The plain attributes of a record or module (its `__dict__` without torch's bookkeeping)."""
    return {name: value for name, value in module_state(module).items() if not name.startswith("_")}


# ----------------------------------------------------------------------------
# What the published source says, read with ast.


class PublishedSource:
    """The classes a published module's source defines, and their constructors' signatures (never executed)."""

    def __init__(self, source: str):
        try:
            tree = ast.parse(source)
        except SyntaxError as error:
            raise SnapshotError(f"the network's embedded source does not parse ({error})") from None
        self.classes: dict[str, ast.FunctionDef | None] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                init = [item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"]
                self.classes[node.name] = init[0] if init else None
        self.family = _family(set(self.classes))

    def parameter_names(self, class_name: str) -> list[str]:
        """The positional parameter names of `class_name.__init__`, without self."""
        init = self.classes.get(class_name)
        return [arg.arg for arg in init.args.args[1:]] if init is not None else []

    def default(self, class_name: str, parameter: str) -> Any:
        """The default value of `parameter` in `class_name.__init__`; SnapshotError if it has none we can read."""
        init = self.classes.get(class_name)
        if init is not None:
            positional = init.args.args
            defaults = dict(
                zip(
                    [a.arg for a in positional[len(positional) - len(init.args.defaults) :]],
                    init.args.defaults,
                    strict=True,
                )
            )
            defaults.update({a.arg: d for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True) if d})
            if parameter in defaults:
                try:
                    return _literal(defaults[parameter])
                except ValueError:
                    pass
        raise SnapshotError(f"the published {class_name} has no readable default for {parameter}")


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def _literal(node: ast.expr) -> Any:
    """Evaluate a constant expression: literals, containers and arithmetic on numbers (such as `2**2.1`)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _literal(node.left), _literal(node.right)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
        if not numbers or (isinstance(node.op, ast.Pow) and abs(right) > 64):  # No 10**10**10 from a file.
            raise ValueError("not a small numeric expression")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    return ast.literal_eval(node)


def _family(class_names: set[str]) -> str:
    """Which published module a set of class definitions is: 'stylegan2', 'stylegan3', 'creps' or 'augment'."""
    if "AugmentPipe" in class_names:
        return "augment"
    if "ToResLayer" in class_names:
        return "creps"
    if {"SynthesisInput", "SynthesisLayer", "SynthesisNetwork"} <= class_names and "SynthesisBlock" not in class_names:
        return "stylegan3"
    if {"SynthesisBlock", "ToRGBLayer"} <= class_names or "DiscriminatorBlock" in class_names:
        return "stylegan2"
    return "unknown"


# ----------------------------------------------------------------------------
# The unpickler.


class SnapshotUnpickler(pickle.Unpickler):
    """Unpickle a network snapshot, resolving only allowlisted globals (see the module docstring)."""

    def __init__(self, file: BinaryIO, file_name: str):
        """
        Args:
            file:      The open pickle.
            file_name: How error messages name the file.
        """
        super().__init__(file)
        self.file_name = file_name
        self._sources: dict[str, PublishedSource] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global the pickle names, or refuse it."""
        key = (module, name)
        if key in _DATA_GLOBALS:
            return _DATA_GLOBALS[key]
        if key in _TORCH_CONTAINERS:
            return _TORCH_CONTAINERS[key]
        if key == PERSISTENCE_GLOBAL:
            return self._persistent_record
        if key == TF_NETWORK_GLOBAL:
            return TFNetworkRecord
        if key in PUBLISHED_BY_REFERENCE:
            return referenced_record_class(module, name)
        if module in SNAPSHOT_MODULES:
            cls = getattr(importlib.import_module(module), name, None)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ in SNAPSHOT_MODULES:
                return cls
        raise UnsafePickleError(
            f"{self.file_name} asks for the global {module}.{name}, which no network snapshot needs; refusing to "
            f"load it (nothing from the file was run). Only our network classes, torch and numpy arrays and plain "
            f"containers are accepted, plus the published StyleGAN2/StyleGAN3/CREPS and TensorFlow StyleGAN2 formats."
        )

    def persistent_load(self, pid: Any) -> Any:
        """Snapshots written by pickle.dump have no persistent ids; a torch.save archive is not a snapshot."""
        raise SnapshotError(f"{self.file_name} is not a network snapshot pickle (it uses persistent ids: {pid!r:.40})")

    def _persistent_record(self, meta: dict[str, Any]) -> PersistentRecord:
        """Stand-in for the published `_reconstruct_persistent_obj`: keep the state, parse (not run) the source."""
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("module_src"), str):
            raise SnapshotError(f"{self.file_name}: a published persistent object has unexpected metadata")
        source_text = meta["module_src"]
        if source_text not in self._sources:
            self._sources[source_text] = PublishedSource(source_text)
        return PersistentRecord(
            self._sources[source_text],
            str(meta.get("class_name")),
            dict(meta.get("state") or {}),
        )


def load(file: BinaryIO, file_name: str) -> Any:
    """Unpickle `file` with SnapshotUnpickler; errors other than UnsafePickleError become SnapshotError."""
    try:
        return SnapshotUnpickler(file, file_name).load()
    except SnapshotError:
        raise
    except Exception as error:  # A truncated or foreign file fails in many ways; all mean "not readable".
        raise SnapshotError(
            f"{file_name} is not a readable network snapshot pickle ({type(error).__name__}: {error})"
        ) from error
