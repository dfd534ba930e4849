"""Checkpoints as data only.

A checkpoint is nested plain data: fedray's own dataclasses (the algorithm's state, jobs
in flight, the server queue...), tuples, lists, dicts, sets, numbers, strings and numpy
arrays. It is written as one ``.npz`` archive holding a JSON tree and the arrays, and read
back with ``allow_pickle=False``. Classes are named by import path, and only dataclasses
(and the run recorder) from fedray's own packages are accepted; they are rebuilt field by
field, without running their constructors. So loading a checkpoint from someone else can
build fedray's data structures and nothing else: it cannot run code.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import math
from enum import IntEnum
from typing import Any

import numpy as np

OWN_PACKAGES = ("algorithms.", "engine.", "workloads.")


class Plain:
    """Marker base for fedray classes that are not dataclasses but checkpoint their
    attributes as they are (the run recorder)."""


def dumps(obj: Any) -> bytes:
    arrays: list[np.ndarray] = []
    tree = _encode(obj, arrays)
    buf = io.BytesIO()
    text = np.frombuffer(json.dumps(tree, allow_nan=False).encode(), dtype=np.uint8)
    named: dict[str, Any] = {f"a{i}": a for i, a in enumerate(arrays)}
    np.savez(buf, tree=text, **named)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    tree = json.loads(arrays.pop("tree").tobytes().decode())
    return _decode(tree, arrays)


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(o: Any, arrays: list[np.ndarray]) -> Any:
    if o is None or isinstance(o, bool | str):
        return o
    if isinstance(o, IntEnum):
        return {"$e": _path(type(o)), "v": int(o)}
    if isinstance(o, int | np.integer) and not isinstance(o, np.bool_):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, float | np.floating):
        x = float(o)
        return x if math.isfinite(x) else {"$f": repr(x)}  # JSON has no NaN or Inf
    if isinstance(o, np.ndarray):
        if o.dtype == object:
            raise TypeError("a checkpoint holds numeric arrays only (got an object array)")
        arrays.append(o)
        return {"$a": len(arrays) - 1}
    if isinstance(o, tuple):
        return {"$t": [_encode(v, arrays) for v in o]}
    if isinstance(o, list):
        return [_encode(v, arrays) for v in o]
    if isinstance(o, set | frozenset):
        return {"$s": [_encode(v, arrays) for v in sorted(o)]}
    if isinstance(o, dict):
        return {"$d": [[_encode(k, arrays), _encode(v, arrays)] for k, v in o.items()]}
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        fields = {f.name: _encode(getattr(o, f.name), arrays) for f in dataclasses.fields(o)}
        return {"$c": _path(type(o)), "f": fields}
    if isinstance(o, Plain):
        return {"$o": _path(type(o)), "f": {k: _encode(v, arrays) for k, v in vars(o).items()}}
    raise TypeError(f"cannot put a {type(o).__name__} into a checkpoint")


def _class(path: str) -> type:
    module, _, name = path.partition(":")
    if not module.startswith(OWN_PACKAGES):
        raise ValueError(f"the checkpoint names a class outside fedray ({path}); refusing to load it")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"the checkpoint names {path}, which is not a class")
    return obj


def _decode(t: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(t, list):
        return [_decode(v, arrays) for v in t]
    if not isinstance(t, dict):
        return t
    if "$a" in t:
        return arrays[f"a{t['$a']}"]
    if "$f" in t:
        return float(t["$f"])
    if "$t" in t:
        return tuple(_decode(v, arrays) for v in t["$t"])
    if "$s" in t:
        return {_decode(v, arrays) for v in t["$s"]}
    if "$d" in t:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in t["$d"]}
    if "$e" in t:
        cls = _class(t["$e"])
        if not issubclass(cls, IntEnum):
            raise ValueError(f"{t['$e']} is not an enumeration")
        return cls(t["v"])
    cls = _class(t["$c"] if "$c" in t else t["$o"])
    fields = {k: _decode(v, arrays) for k, v in t["f"].items()}
    if "$c" in t:
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{t['$c']} is not a dataclass")
        obj = object.__new__(cls)
        for k, v in fields.items():
            object.__setattr__(obj, k, v)  # frozen or not; no constructor runs
        return obj
    if not issubclass(cls, Plain):
        raise ValueError(f"{t['$o']} is not a checkpointable class")
    plain = object.__new__(cls)
    plain.__dict__.update(fields)
    return plain
