"""Dataset registry: ``name -> loader`` returning in-memory :class:`TensorData`.

Every loader has the signature ``loader(root: Path, split: str, download: bool) -> TensorData``
where ``root`` is the resolved data root (``--data-dir``, else ``$SHIFTLAB_DATA``, else
``~/.cache/shiftlab``). User data works anywhere a name does: ``folder:PATH`` (ImageFolder
layout) and ``npz:PATH`` (arrays ``x`` and ``y``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shiftlab.data.tensors import TensorData
from shiftlab.registry import Registry

Loader = Callable[[Path, str, bool], TensorData]

DATASETS: Registry[Loader] = Registry("dataset")

DEFAULT_DATA_DIR = Path("~/.cache/shiftlab")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$SHIFTLAB_DATA``, else ``~/.cache/shiftlab``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("SHIFTLAB_DATA")
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> TensorData:
    """Load a dataset into memory.

    Args:
        name: a registered name (``shiftlab list datasets``), ``folder:PATH`` or ``npz:PATH``.
        split: ``"train"`` or ``"test"`` (some datasets have more, see their docstrings).
        data_dir: data root; see :func:`resolve_data_dir`.
        download: allow fetching missing files from the internet (never done otherwise).

    Returns:
        A :class:`TensorData` with ``x: [N, C, H, W]`` uint8 and ``y: [N]`` int64.
    """
    if ":" in name and name.split(":", 1)[0] in ("folder", "npz"):
        kind, path = name.split(":", 1)
        return DATASETS.get(kind)(Path(path).expanduser(), split, download)
    return DATASETS.get(name)(resolve_data_dir(data_dir), split, download)


# Registration happens on import of the loader modules (they import DATASETS from here).
from shiftlab.data import embedded, loaders  # noqa: E402,F401
