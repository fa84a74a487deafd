"""Atomic file writes and safe checkpoints.

Every file a run writes goes through :func:`atomic_write_bytes` (write a temporary file in
the same folder, flush, fsync, then ``os.replace``), so an interrupted run never leaves a
half-written ``metrics.json`` or checkpoint. Checkpoints are ``safetensors`` files for
tensors plus a JSON file for the structure and scalars; loading never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from shiftlab.errors import DataError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line (a single ``write`` of a complete line, then fsync)."""
    line = json.dumps(obj, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (from a killed writer) is ignored."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- checkpoints


def _flatten(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace tensors inside a nested structure by ``{"__tensor__": key}`` references."""
    if isinstance(obj, Tensor):
        key = prefix or "t"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [[_key(k), _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint object of type {type(obj).__name__} at {prefix!r}")


def _key(k: Any) -> Any:
    if isinstance(k, (str, int)):
        return k
    raise TypeError(f"checkpoint dict keys must be str or int, got {type(k).__name__}")


def _unflatten(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Save a nested state (tensors, dicts, lists, scalars) as ``<path>.safetensors`` + ``<path>.json``.

    Both files are written atomically; the JSON is written last and names the tensor file,
    so a checkpoint is complete exactly when its JSON exists.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    tfile = path.with_suffix(".safetensors")
    tfile.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{tfile.name}.", suffix=".tmp", dir=tfile.parent)
    os.close(fd)
    try:
        # safetensors refuses shared storage; clone to be safe.
        save_file({k: v.clone() for k, v in tensors.items()}, tmp)
        os.replace(tmp, tfile)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(path.with_suffix(".json"), {"format": "shiftlab-state-1", "tensors": tfile.name, "state": skeleton})
    return path.with_suffix(".json")


def load_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a state written by :func:`save_state` (no unpickling)."""
    jpath = Path(path).with_suffix(".json")
    try:
        meta = json.loads(jpath.read_text(encoding="utf-8"))
        tensors = load_file(str(jpath.parent / meta["tensors"]), device=str(device))
        return _unflatten(meta["state"], tensors)
    except FileNotFoundError as exc:
        raise DataError(f"Checkpoint {jpath} (or its tensor file) is missing: {exc}.") from exc
    except (json.JSONDecodeError, KeyError, OSError, RuntimeError, Exception) as exc:  # noqa: B014
        raise DataError(
            f"Checkpoint {jpath} is corrupt or incomplete ({type(exc).__name__}: {exc}). "
            "Delete this checkpoint to restart that run from scratch, or restore it from a backup."
        ) from exc
