"""The STMedFM architecture (paper section III.C, Table 2): two conv stems, one shared MLP encoder, task heads.

Both stems always exist, even in a single-task model, because the paper's Table 4 "total" counts include both
(2D stem 56,320 + 3D stem 69,664 + encoder 33,536 + one head 64*C + C). Heads are plain ``Linear(width, C)``
layers keyed by task, so the multi-task checkpoint carries one head per pretraining task and a downstream model
keeps only its own (:meth:`STMedFM.keep_heads`). LoRA and adapters are added later by :mod:`stmedfm.model.peft`;
this module only leaves the places for them (``ResidualMLPBlock.fc1/fc2`` and ``Encoder.adapters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from stmedfm.core import registry
from stmedfm.core.errors import StmedfmError

__all__ = ["ResidualMLPBlock", "Encoder", "STMedFM", "stem2d", "stem3d"]


class ResidualMLPBlock(nn.Module):
    """Pre-LN residual MLP, ``x + fc2(GELU(fc1(norm(x))))``.

    ``fc1`` and ``fc2`` are kept as named attributes because they are the "encoder Linear layers" that LoRA wraps.
    """

    def __init__(self, width: int = 64, hidden: int = 128, ln_affine: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=ln_affine)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Encoder(nn.Module):
    """The shared, modality-agnostic part: ``n_blocks`` residual MLP blocks and a final LayerNorm.

    ``adapters`` stays empty for the plain model (so it adds no parameters); :func:`stmedfm.model.peft.add_adapters`
    fills it with one adapter per block, applied right after that block ("after the encoder MLP blocks").
    """

    def __init__(self, width: int = 64, hidden: int = 128, n_blocks: int = 2, ln_affine: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, hidden, ln_affine) for _ in range(n_blocks))
        self.adapters = nn.ModuleList()
        self.norm = nn.LayerNorm(width, elementwise_affine=ln_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapters and len(self.adapters) != len(self.blocks):
            raise StmedfmError(
                f"The encoder has {len(self.blocks)} blocks but {len(self.adapters)} adapters; "
                "add adapters with stmedfm.model.peft.add_adapters, which inserts exactly one per block."
            )
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.adapters:
                x = self.adapters[i](x)
        return self.norm(x)


def stem2d(width: int = 64) -> nn.Sequential:
    """2D stem of Table 2: three 3x3 convs (stride 1, 2, 2) with ReLU, then global average pooling.

    Global pooling makes the stem size-agnostic, so the same weights accept 28, 64, 128 or 224 px images.
    """
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def stem3d(width: int = 64) -> nn.Sequential:
    """3D stem of Table 2: three 3x3x3 convs (stride 1, 2, 2) with ReLU on single-channel volumes, then pooling."""
    return nn.Sequential(
        nn.Conv3d(1, 16, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv3d(32, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(),
    )  # fmt: skip


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StmedfmError(f"STMedFM parameter {name} must be a positive integer, got {value!r}.")
    return value


class STMedFM(nn.Module):
    """Cross-modal multi-task backbone: ``head[task](encoder(stem_{2D|3D}(x)))``.

    ``tasks`` is either a mapping ``flag -> n_classes`` or an iterable of MedMNIST flags (classes and
    dimensionality then come from :mod:`stmedfm.core.registry`). A head for a name outside the registry is added with
    :meth:`add_head` giving both ``n_classes`` and ``dim``. Defaults reproduce the paper (width 64, hidden 128,
    2 blocks); ``ln_affine=False`` gives parameter-free LayerNorms for ablations.
    """

    def __init__(
        self,
        tasks: Mapping[str, int] | Iterable[str] = (),
        width: int = 64,
        hidden: int | None = None,
        n_blocks: int = 2,
        ln_affine: bool = True,
    ) -> None:
        super().__init__()
        self.width = _check_positive("width", width)
        self.hidden = _check_positive("hidden", 2 * width if hidden is None else hidden)
        self.n_blocks = _check_positive("n_blocks", n_blocks)
        self.ln_affine = bool(ln_affine)
        # channels-last convolutions are 1.3x (2D) and 1.5x (3D) faster on CPU (measured by `stmedfm bench`)
        self.stem2d = stem2d(width).to(memory_format=torch.channels_last)
        self.stem3d = stem3d(width).to(memory_format=torch.channels_last_3d)
        self.encoder = Encoder(width, self.hidden, n_blocks, ln_affine)
        self.heads = nn.ModuleDict()
        self.task_dims: dict[str, int] = {}
        if isinstance(tasks, str):
            tasks = [tasks]  # a lone flag, not an iterable of its characters
        if isinstance(tasks, Mapping):
            for task, n_classes in tasks.items():
                self.add_head(task, n_classes)
        else:
            for task in tasks:
                self.add_head(task)

    # ----------------------------------------------------------------------------------------------- heads
    def add_head(self, task: str, n_classes: int | None = None, dim: int | None = None) -> nn.Linear:
        """Add (or return the existing) head ``Linear(width, n_classes)`` for ``task``.

        A registry flag needs no arguments; given values must agree with the registry, since the data files
        decide the label count and dimensionality. Any other name needs both ``n_classes`` and ``dim`` (2 or 3).
        """
        task = str(task)
        if not task or "." in task:
            raise StmedfmError(f"Invalid task name '{task}': use a non-empty name without '.', e.g. 'pathmnist'.")
        try:
            info = registry.get(task)
        except StmedfmError:
            info = None
        if info is not None:
            for name, given, known in (("n_classes", n_classes, info.n_classes), ("dim", dim, info.dim)):
                if given is not None and given != known:
                    raise StmedfmError(
                        f"Task '{task}' is the MedMNIST flag with {name}={known}, but {name}={given} was given. "
                        f"Omit {name} to use the registry value, or choose another task name."
                    )
            task, n_classes, dim = info.flag, info.n_classes, info.dim  # 'PathMNIST' -> 'pathmnist'
        elif n_classes is None or dim is None:
            raise StmedfmError(
                f"'{task}' is not a MedMNIST flag.{registry.closest(task.lower(), registry.flags())} "
                f"For a custom task pass both n_classes and dim, e.g. add_head('{task}', n_classes=5, dim=2)."
            )
        n_classes = _check_positive("n_classes", n_classes)
        if dim not in (2, 3):
            raise StmedfmError(f"dim of task '{task}' must be 2 (images) or 3 (volumes), got {dim!r}.")
        if task in self.heads:
            head = self.heads[task]
            if head.out_features != n_classes or self.task_dims[task] != dim:
                raise StmedfmError(
                    f"Task '{task}' already has a {self.task_dims[task]}D head with {head.out_features} classes; "
                    f"drop it with keep_heads(...) before adding one with {n_classes} classes ({dim}D)."
                )
            return head
        head = nn.Linear(self.width, n_classes)
        self.heads[task] = head
        self.task_dims[task] = dim
        return head

    def keep_heads(self, tasks: Iterable[str]) -> None:
        """Drop every head not in ``tasks``; downstream models are single-task, which is how Table 4 counts."""
        keep = [tasks] if isinstance(tasks, str) else list(tasks)
        missing = [t for t in keep if t not in self.heads]
        if missing:
            raise StmedfmError(
                f"Cannot keep heads {missing}: the model only has heads for {sorted(self.heads)}. "
                "Add them first with add_head(task)."
            )
        for task in [t for t in self.heads if t not in keep]:
            del self.heads[task]
            del self.task_dims[task]

    # ----------------------------------------------------------------------------------------------- forward
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Shared representation ``(B, width)``; the stem is chosen by ``x.ndim`` (4 -> 2D, 5 -> 3D).

        A single-channel 2D batch is repeated to 3 channels, the convention for grayscale MedMNIST flags.
        """
        if x.ndim == 4:
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] != 3:
                raise StmedfmError(
                    f"The 2D stem expects (B, 3, H, W) images (or 1 channel, repeated), got shape {tuple(x.shape)}; "
                    "put channels first, e.g. x.permute(0, 3, 1, 2) for (B, H, W, 3) arrays."
                )
            z = self.stem2d(x.contiguous(memory_format=torch.channels_last))
        elif x.ndim == 5:
            if x.shape[1] != 1:
                raise StmedfmError(
                    f"The 3D stem expects single-channel volumes (B, 1, D, H, W), got shape {tuple(x.shape)}; "
                    "add the channel axis with x.unsqueeze(1)."
                )
            z = self.stem3d(x.contiguous(memory_format=torch.channels_last_3d))
        else:
            raise StmedfmError(
                f"STMedFM expects a 4D image batch (B, 3, H, W) or a 5D volume batch (B, 1, D, H, W), "
                f"got a {x.ndim}D tensor of shape {tuple(x.shape)}."
            )
        return self.encoder(z)

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Logits ``(B, C)`` of ``task``'s head; refuses inputs whose dimensionality does not match the task."""
        if task not in self.heads:
            raise StmedfmError(
                f"The model has no head for task '{task}'.{registry.closest(str(task), list(self.heads))} "
                f"Heads: {', '.join(self.heads) or 'none'}; add one with add_head('{task}')."
            )
        want = self.task_dims[task]
        got = {4: 2, 5: 3}.get(x.ndim)
        if got is not None and got != want:
            shape = "(B, 3, H, W)" if want == 2 else "(B, 1, D, H, W)"
            raise StmedfmError(
                f"Task '{task}' is {want}D but got a {got}D batch of shape {tuple(x.shape)}; "
                f"send {shape} inputs to this task."
            )
        return self.heads[task](self.features(x))
