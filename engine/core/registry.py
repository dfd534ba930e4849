"""Registries of algorithms, workloads, partitions and speed families that also hold the
user's own, without forking fedray.

A config names a component by its built-in name, by an import path
(``my_pkg.vision:MyWorkload``), by a file and a name in it (``./my_method.py:MyAlgorithm``,
relative to the working directory), or by the name of a package entry point in the group
``fedray.<kind>s`` (``fedray.algorithms``, ``fedray.workloads``, ``fedray.partitions``,
``fedray.speeds``). A lookup imports the plug-in on first use, in whatever process asks:
the driver when it validates the config, each executor when it sets up, so a plug-in
reaches executors like any module (on a cluster: ``ray.working_dir`` / ``ray.py_modules``).
A plug-in that does not follow the contract is refused in one line naming what is missing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PluginError(KeyError):
    """A component name that names nothing usable; the message is one line."""

    def __str__(self) -> str:
        return str(self.args[0])


def load_object(ref: str) -> Any:
    """The object ``ref`` names: ``module.path:attr`` or ``path/to/file.py:attr``."""
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise PluginError(f"{ref!r} is not a plug-in reference; write package.module:Name or ./file.py:Name")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plug-in file {where!r} not found (relative paths are from {Path.cwd()})")
        # One module per file, named after its path, so two files with one stem never clash.
        name = f"fedray_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # before running it: dataclasses look their module up
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise PluginError(
                f"cannot import {where!r} for {ref!r} ({e}); is it installed or on PYTHONPATH?"
            ) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise PluginError(f"{where!r} has no {attr!r} (from {ref!r})") from None
    return obj


class Registry(dict[str, T], Generic[T]):
    """Built-ins by name; anything else is resolved as a plug-in on first lookup and kept."""

    def __init__(self, kind: str, builtins: dict[str, T], check: Callable[[str, Any], T]) -> None:
        super().__init__(builtins)
        self.builtins = dict(builtins)  # the names fedray ships, whatever plug-ins join later
        self.kind = kind  # "algorithm", "workload", ...
        self.check = check  # (name, object) -> the object, or PluginError saying what is missing

    @property
    def group(self) -> str:
        return f"fedray.{self.kind}s"

    def __missing__(self, name: str) -> T:
        if ":" in name:
            found = self.check(name, load_object(name))
        else:
            points = [ep for ep in entry_points(group=self.group) if ep.name == name]
            if not points:
                raise PluginError(f"unknown {self.kind} {name!r}")
            found = self.check(name, points[0].load())
        self[name] = found
        return found

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        try:
            self[name]  # type: ignore[index]
        except PluginError:
            return False
        return True

    def problem(self, name: str) -> str:
        """Why ``name`` names nothing usable here ("" if it does)."""
        try:
            self[name]
        except PluginError as e:
            return str(e)
        return ""

    def discover(self) -> Iterator[tuple[str, T]]:
        """Built-ins, then every installed entry point of this kind (for ``--list``)."""
        yield from list(self.items())
        for ep in entry_points(group=self.group):
            if not dict.__contains__(self, ep.name):
                yield ep.name, self[ep.name]


def subclass_with_params(base: type, what: str) -> Callable[[str, Any], type]:
    """A contract check: a subclass of ``base`` with a ``Params`` dataclass."""
    import dataclasses

    def check(name: str, obj: Any) -> type:
        if not isinstance(obj, type) or not issubclass(obj, base):
            raise PluginError(
                f"{what} plug-in {name!r} is not a subclass of {base.__module__}.{base.__name__}"
            )
        params = getattr(obj, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
            raise PluginError(f"{what} plug-in {name!r} has no Params dataclass (its config keys)")
        missing = sorted(getattr(obj, "__abstractmethods__", ()))
        if missing:
            raise PluginError(f"{what} plug-in {name!r} does not define {', '.join(missing)}")
        return obj

    return check


def function(what: str) -> Callable[[str, Any], Callable[..., Any]]:
    """A contract check: something callable (a partition scheme, a speed family)."""

    def check(name: str, obj: Any) -> Callable[..., Any]:
        if not callable(obj):
            raise PluginError(f"{what} plug-in {name!r} is not callable")
        return obj

    return check
