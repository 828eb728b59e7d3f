"""Facts of every MedMNIST v2 flag (12 2D, 6 3D), at 28 px and the MedMNIST+ sizes 64, 128, 224.

The facts are copied, as data, from ``INFO`` of ``medmnist==3.0.2`` (``medmnist/info.py``) into
``medmnist_info.json`` beside this module, so nothing here depends on the ``medmnist`` package at run time
(it pulls torchvision). Dimensionality is not in ``INFO``; it follows from the flag name (``*3d``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from stmedfm.core.errors import StmedfmError

SIZES = (28, 64, 128, 224)
#: The paper's four tasks (PathMNIST, BloodMNIST, DermaMNIST, OrganMNIST3D): its protocol, Table 4's counts.
PAPER_TASKS = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FlagInfo:
    """Everything the project needs to know about one MedMNIST flag."""

    flag: str
    python_class: str
    dim: int  # 2 for images, 3 for volumes
    n_channels: int  # channels stored in the file (1 or 3); 2D files are fed to the stem as 3 channels
    labels: tuple[str, ...]
    task: str  # 'multi-class', 'binary-class', 'ordinal-regression' or 'multi-label, binary-class'
    n_samples: dict = field(hash=False)  # official split sizes {'train', 'val', 'test'}
    md5: dict = field(hash=False)  # {size: official md5 of the file}
    url: dict = field(hash=False)  # {size: official download URL}
    license: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def lateral(self) -> bool:
        """Whether class names carry a body side ('femur-left'): mirroring an image swaps such labels."""
        return any(("left" in name or "right" in name) for name in self.labels)

    @property
    def modality(self) -> str:
        return "3D" if self.dim == 3 else "2D"

    def filename(self, size: int = 28) -> str:
        """``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` for MedMNIST+."""
        check_size(size)
        return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"

    def image_shape(self, size: int = 28) -> tuple[int, ...]:
        """Shape of one image as stored in the official file (without the leading N)."""
        check_size(size)
        if self.dim == 3:
            return (size, size, size)
        return (size, size) if self.n_channels == 1 else (size, size, 3)

    def label_shape(self) -> tuple[int, ...]:
        """Shape of one label row as stored in the official file."""
        return (self.n_classes,) if self.multi_label else (1,)


@lru_cache(maxsize=1)
def _raw() -> dict:
    text = resources.files("stmedfm").joinpath("medmnist_info.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=None)
def _build(flag: str) -> FlagInfo:
    d = _raw()["flags"][flag]
    md5 = {28: d["MD5"], **{s: d[f"MD5_{s}"] for s in SIZES[1:] if f"MD5_{s}" in d}}
    url = {28: d["url"], **{s: d[f"url_{s}"] for s in SIZES[1:] if f"url_{s}" in d}}
    labels = tuple(d["label"][str(i)] for i in range(len(d["label"])))
    return FlagInfo(
        flag=flag,
        python_class=d["python_class"],
        dim=3 if flag.endswith("3d") else 2,
        n_channels=int(d["n_channels"]),
        labels=labels,
        task=d["task"],
        n_samples=dict(d["n_samples"]),
        md5=md5,
        url=url,
        license=d.get("license", ""),
    )


def flags() -> tuple[str, ...]:
    """All 18 flags, in MedMNIST's order."""
    return tuple(_raw()["flags"])


def closest(name: str, choices) -> str:
    """A 'did you mean' suffix for an unknown name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def get(flag: str) -> FlagInfo:
    """Facts of ``flag``; an unknown flag raises :class:`StmedfmError` suggesting the closest name."""
    key = str(flag).lower()
    if key not in _raw()["flags"]:
        raise StmedfmError(
            f"Unknown MedMNIST flag '{flag}'.{closest(key, flags())} "
            f"Known flags: {', '.join(flags())}."
        )
    return _build(key)


def check_size(size: int) -> int:
    """Validate an image size (28 or a MedMNIST+ size)."""
    if size not in SIZES:
        raise StmedfmError(f"Unsupported image size {size}: MedMNIST files exist at {', '.join(map(str, SIZES))} px.")
    return size


def train_proportions(task_flags) -> dict[str, float]:
    """Sampling probability of each task, proportional to its *official* train size (Table 3 protocol).

    Official sizes come from the registry, so a subset or synthetic file does not change the protocol.
    """
    sizes = {f: get(f).n_samples["train"] for f in task_flags}
    total = sum(sizes.values())
    return {f: n / total for f, n in sizes.items()}
