"""A trained model as a shareable artefact: a folder in the Hugging Face convention, loaded without retraining.

A folder written by ``stmedfm export`` (:mod:`stmedfm.run.export`) holds ``model.safetensors`` (the weights),
``config.json`` (the architecture, the strategy and its options, the task heads and class names, the input
convention, the study's parameters and provenance, and the sha256 of the weights) and ``README.md`` (the model
card). :class:`STMedFMHub` is the model class with Hugging Face's :class:`~huggingface_hub.PyTorchModelHubMixin`,
so ``STMedFMHub.from_pretrained(folder_or_hub_id)``, ``save_pretrained`` and ``push_to_hub`` are the library's
own; safetensors reads and writes the weights (no pickle). What this module adds, and why it is ours:

* the constructor rebuilds the *adapted* model from ``config.json`` — the strategy's modules (LoRA, adapters, a peft
  method) are inserted by :data:`stmedfm.model.peft.INSERTS`, the same surgery training used, so the state dict's keys
  are the trained model's and the load is strict (a missing or extra tensor is an error, not a silent default);
* the weights' sha256, recorded in ``config.json`` when the folder is written, is checked before they are read: a
  changed or truncated file is refused in one line.

The layer: below :mod:`stmedfm.run.inference` (whose ``load_model`` reads such a folder), above :mod:`stmedfm.model.peft`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download

from stmedfm.model import peft as P
from stmedfm.core import strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.core.seal import sha256_file  # one streaming digest for stores and exports

__all__ = ["STMedFMHub", "WEIGHTS", "CONFIG", "FORMAT", "sha256_file", "is_export", "read_config"]

WEIGHTS = constants.SAFETENSORS_SINGLE_FILE  #: "model.safetensors"
CONFIG = constants.CONFIG_NAME  #: "config.json"
FORMAT = "stmedfm-export/1"  #: ``config.json``'s ``format``: what a reader checks before anything else


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``stmedfm export`` (its config.json names our format)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of an exported folder, or one line saying what is wrong."""
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise StmedfmError(f"{folder} is not an exported model: it has no {CONFIG} (write one with `stmedfm export`)."
                           ) from None
    except (OSError, ValueError) as exc:
        raise StmedfmError(f"{path} cannot be read as JSON ({exc}); export the model again.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise StmedfmError(f"{path} is not a config of `stmedfm export` (format {FORMAT} expected).")
    return config


def _peft_method(value: dict | None) -> strategies.PeftMethod | None:
    if value is None:
        return None
    return strategies.PeftMethod.of(value["config"], value.get("targets", "linears"), **value.get("options", {}))


def peft_dict(method: strategies.PeftMethod | None) -> dict | None:
    """A :class:`~stmedfm.core.strategies.PeftMethod` as JSON (what :class:`STMedFMHub` rebuilds it from)."""
    if method is None:
        return None
    return {"config": method.config, "targets": method.targets,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in method.options}}


class STMedFMHub(STMedFM, PyTorchModelHubMixin, library_name="stmedfm", tags=["medmnist", "medical-imaging"],
                 repo_url="https://github.com/stmedfm/stmedfm"):
    """An :class:`~stmedfm.model.STMedFM` whose constructor arguments are its ``config.json``.

    ``heads``: ``{task: [n_classes, dim]}``. ``inserts`` (with ``lora_r``, ``lora_alpha``, ``adapter_bottleneck``,
    ``peft``): the modules the strategy added, inserted again in the same order so the state dict matches.
    Any other key of ``config.json`` (labels, provenance, the digest) is kept in :attr:`meta`.

    >>> model = STMedFMHub.from_pretrained("models/stmedfm-offline-bloodmnist-adapter")   # or a Hub id
    >>> model.push_to_hub("you/stmedfm-bloodmnist-adapter")   # needs a Hugging Face token and network
    """

    def __init__(self, heads: dict | None = None, width: int = 64, hidden: int | None = None, n_blocks: int = 2,
                 ln_affine: bool = True, inserts: list | None = None, lora_r: int = 4, lora_alpha: float = 4.0,
                 adapter_bottleneck: int = 16, peft: dict | None = None, **meta) -> None:
        super().__init__((), width=width, hidden=hidden, n_blocks=n_blocks, ln_affine=ln_affine)
        for task, (n_classes, dim) in (heads or {}).items():
            self.add_head(task, n_classes=n_classes, dim=dim)
        options = {"lora_r": lora_r, "lora_alpha": lora_alpha, "adapter_bottleneck": adapter_bottleneck,
                   "peft": _peft_method(peft)}
        for kind in inserts or ():
            if kind not in P.INSERTS:
                raise StmedfmError(f"The model inserts '{kind}', which this stmedfm does not know "
                                   f"({', '.join(P.INSERTS)}); install the stmedfm that exported it.")
            P.INSERTS[kind][1](self, options)
        self.meta = meta
        self.eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's safetensors writer, then ``config.json`` with the weights' sha256 (the mixin keeps it)."""
        super()._save_pretrained(save_directory)
        config = {**(self._hub_mixin_config or {}), "weights_sha256": sha256_file(Path(save_directory) / WEIGHTS)}
        (Path(save_directory) / CONFIG).write_text(json.dumps(config, sort_keys=True, indent=2) + "\n")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download: bool, local_files_only: bool,
                         token, map_location: str = "cpu", strict: bool = True, **model_kwargs):
        """The mixin's loader with two changes: the weights' sha256 is checked first, and the load is strict."""
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS)
            if not os.path.isfile(weights):
                raise StmedfmError(f"{model_id} has no {WEIGHTS}: export the model again.")
        else:
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)
        want = model_kwargs.get("weights_sha256")
        if not want:
            raise StmedfmError(f"{model_id}'s {CONFIG} records no weights_sha256, so its weights cannot be verified.")
        got = sha256_file(weights)
        if got != want:
            raise StmedfmError(f"{weights} is not the exported file (sha256 {got[:12]}…, config.json records "
                               f"{want[:12]}…): it changed after export; export or download it again.")
        model = cls(**model_kwargs)
        return cls._load_as_safetensor(model, weights, map_location, strict)
