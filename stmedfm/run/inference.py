"""Use what was trained: any downstream model of a result store, ready for inference on new images.

Design (the simplest honest one). A study's store keeps the pretrained checkpoints (``checkpoints/``) and each
run's metrics (``runs/<run id>.json``), not the fine-tuned weights: a study trains hundreds of models and reads
only their metrics. A run is a deterministic function of its spec, its checkpoint and the config's training fields
(the same seed gives the same numbers, whatever the worker count), so :func:`load_model` *re-materialises* it:
it trains the run again from its checkpoint, in one torch thread as the study's workers do (seconds), then
evaluates it and checks that its metrics equal the stored ones, so the model you get is provably the one the
tables report (a mismatch, e.g. another torch, raises instead of handing out a different model). The weights are
then kept as ``results/<study>/models/<run id>.pt`` (the model's ``state_dict``, read back with
``weights_only=True``), so the next load takes milliseconds. Run ids and the store's other files are unchanged.

A model to hand on is a folder written by ``stmedfm export`` (:mod:`stmedfm.run.export`, :mod:`stmedfm.run.hub`:
safetensors weights, config.json, a model card); ``load_model(folder)`` reads it, checks its sha256 and trains
nothing. The repository commits the reference study's seed-0 backbone and one adapted model per task in
``models/`` (docs/models.md):

>>> from stmedfm.run.inference import load_model
>>> m = load_model("models/stmedfm-offline-bloodmnist-adapter-seed0")
>>> m.predict(images)            # (N, 28, 28, 3) uint8 as in MedMNIST's .npz -> (N, 8) class probabilities
>>> m.labels[m.predict(images).argmax(1)]
>>> m = load_model("results/<study>", task="bloodmnist", strategy="full", seed=0)   # a store with its runs
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stmedfm.core import registry, seal
from stmedfm.run import hub
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.executors import single_thread
from stmedfm.model import STMedFM
from stmedfm.run.planning import job_id, study_data
from stmedfm.core.records import PretrainJob, RunSpec
from stmedfm.run.planning import run_id as make_id
from stmedfm.core.registry import FlagInfo
from stmedfm.run.store import ResultStore, checkpoint_state
from stmedfm.run.train import adapt, downstream_model, evaluate, predict_logits

__all__ = ["TrainedModel", "load_model", "find_run"]

#: Metrics compared with the stored ones when a run is re-materialised.
CHECKED_METRICS = ("accuracy", "macro_auroc", "ece", "nll")


@dataclass
class TrainedModel:
    """A trained downstream model of a study, in evaluation mode, with what defines it."""

    model: STMedFM
    cfg: StudyConfig  #: the study's config (results/<study>/config.yaml)
    spec: RunSpec  #: task, strategy (its LoRA / adapter modules are in ``model``), seed, steps, ...
    run_id: str
    info: FlagInfo  #: the task's facts (classes, channels, dimensionality)
    source: str  #: 'saved' (read from models/), 're-materialised' (trained again, metrics checked) or 'exported'

    @property
    def labels(self) -> np.ndarray:
        """Class names, indexable by predicted class."""
        return np.array(list(self.info.labels), dtype=object)

    def inputs(self, images) -> torch.Tensor:
        """MedMNIST-layout uint8 images -> the tensor layout the study trains on: 2D (N, H, W) grayscale or
        (N, H, W, 3) RGB -> (N, 3, H, W); 3D (N, D, H, W) -> (N, 1, D, H, W). A single image is accepted too."""
        x = torch.as_tensor(np.asarray(images))
        if x.dtype != torch.uint8:
            raise StmedfmError(f"Images must be uint8 (0-255) as in MedMNIST's files, got {x.dtype}.")
        if self.info.dim == 3:  # (N, D, H, W), or one (D, H, W)
            x = x.unsqueeze(0) if x.ndim == 3 else x
            expected = 4
        elif self.info.n_channels == 1:  # (N, H, W), or one (H, W)
            x = x.unsqueeze(0) if x.ndim == 2 else x
            expected = 3
        else:  # (N, H, W, 3), or one (H, W, 3)
            x = x.unsqueeze(0) if x.ndim == 3 else x
            expected = 4
        if x.ndim != expected:
            raise StmedfmError(f"Images of {self.info.flag} have shape {tuple(x.shape)}; expected MedMNIST's layout "
                               f"({'N, D, H, W' if self.info.dim == 3 else 'N, H, W' if expected == 3 else 'N, H, W, 3'}).")
        if self.info.dim == 3:
            return x.unsqueeze(1)
        if self.info.n_channels == 1:
            return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return x.permute(0, 3, 1, 2).contiguous()

    def logits(self, images, batch_size: int | None = None) -> np.ndarray:
        """Raw logits (N, classes) of MedMNIST-layout uint8 images."""
        x = self.inputs(images)
        return predict_logits(self.model, self.spec.task, x, batch_size or self.cfg.eval_batch_size(self.spec.task))

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (N, classes) of MedMNIST-layout uint8 images (softmax of :meth:`logits`; the
        study's temperature scaling is reported, never applied, so neither is it here)."""
        z = self.logits(images, batch_size)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def find_run(store, task: str | None = None, strategy: str | None = None, seed: int | None = None,
             experiment: str = "transfer", run_id: str | None = None, data=None):
    """``(run id, RunSpec)`` of one finished run of the store's plan: by ``run_id``, or the ``experiment``'s run of
    ``task`` x ``strategy`` x ``seed`` (default: the first task, strategy and seed of the config). ``data``: the
    identities of the study's files (:func:`stmedfm.run.planning.study_data`, read when None)."""
    cfg = store.config()
    data = study_data(cfg) if data is None else data
    runs = [(make_id(cfg, p.spec, data), p) for p in store.planned(cfg, data)]
    if run_id is not None:
        hits = [(rid, p) for rid, p in runs if rid == run_id]
    else:
        hits = [(rid, p) for rid, p in runs if p.experiment == experiment
                and (task is None or p.spec.task == task) and (strategy is None or p.spec.strategy == strategy)
                and (seed is None or p.spec.seed == seed) and p.variant in ("", "weights on", "all tasks")]
    if not hits:
        what = run_id or f"{experiment} run of task={task} strategy={strategy} seed={seed}"
        raise StmedfmError(f"{store.root} plans no {what}; its tasks: {', '.join(cfg.downstream_tasks)}, "
                           f"strategies: {', '.join(cfg.strategies)}, seeds: {cfg.seeds}.")
    rid, p = hits[0]
    if not store.has_run(rid):
        raise StmedfmError(f"Run {rid} ({p.spec.task} {p.spec.strategy} seed={p.spec.seed}) of {store.root} has not "
                           f"been computed yet: run the study first (`stmedfm study PARAMS`).")
    return rid, p.spec


def model_path(store, rid: str) -> Path:
    return Path(store.root) / "models" / f"{rid}.pt"


def load_model(results: str | os.PathLike, task: str | None = None, strategy: str | None = None,
               seed: int | None = None, experiment: str = "transfer", run_id: str | None = None,
               save: bool = True) -> TrainedModel:
    """The trained model of one finished run of the store ``results``, or of the folder ``stmedfm export`` wrote.

    An exported folder (``models/...``): its weights are verified by the sha256 of its config.json and loaded as
    they are (no data, no training); ``task`` picks a head of an exported backbone (default: its first).

    Select it by ``run_id`` or by ``task``, ``strategy``, ``seed`` and ``experiment`` (default: the transfer run of
    the first downstream task, strategy and seed). The model comes with the study's config and the strategy's
    modules (LoRA / adapters inserted as trained). Weights saved by an earlier call (``models/<run id>.pt``) are
    loaded with ``weights_only=True``; otherwise the run is re-materialised from its checkpoint and verified
    against its stored metrics (see the module docstring), and saved when ``save``.
    """
    if hub.is_export(results):
        return _load_export(results, task)
    store = ResultStore(results)
    cfg = store.config()
    data = study_data(cfg)  # locates and verifies the study's files: a run's id covers its data
    rid, spec = find_run(store, task, strategy, seed, experiment, run_id, data)
    pretrained = None
    if spec.pretrain:
        job = job_id(cfg, PretrainJob(spec.seed, spec.pretrain), data)
        if not store.checkpoint_path(job).is_file():
            raise StmedfmError(f"The checkpoint of run {rid} ({store.checkpoint_path(job)}) is missing: rerun the "
                               f"study to rebuild it.")
        pretrained = checkpoint_state(_torch_load(store.checkpoint_path(job)), job)
        if pretrained is None:
            raise StmedfmError(f"{store.checkpoint_path(job)} holds another checkpoint than run {rid}'s: rerun the "
                               f"study to rebuild it.")
    info = registry.get(spec.task)
    saved = model_path(store, rid)
    if saved.is_file():
        _check_saved(store, saved)
        model = downstream_model(cfg, spec, pretrained)
        try:
            model.load_state_dict(_torch_load(saved))
        except RuntimeError as exc:  # other keys or shapes
            raise StmedfmError(f"'{saved}' does not fit run {rid}'s model ({str(exc).splitlines()[0]}); delete it and "
                               f"load again to re-materialise it.") from None
        return TrainedModel(model.eval(), cfg, spec, rid, info, "saved")

    with single_thread():  # as the study's workers: the same floats
        model, task_data, _ = adapt(cfg, spec, pretrained)
        metrics, _ = evaluate(cfg, spec, model, task_data)
    stored = store.read_run(rid)["metrics"]
    differ = {m: (stored[m], metrics[m]) for m in CHECKED_METRICS
              if m in stored and not _same(stored[m], metrics[m])}
    if differ:
        raise StmedfmError(
            f"Re-materialising run {rid} gave other metrics than the stored ones "
            f"({', '.join(f'{m}: stored {a:.6f}, now {b:.6f}' for m, (a, b) in differ.items())}); the software or "
            f"data differ from those that computed {store.root} (see its config.yaml), so no model is returned.")
    if save:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        seal.write_bytes(store.root, f"models/{saved.name}", buf.getvalue())  # its sha256, checked at every load
    return TrainedModel(model.eval(), cfg, spec, rid, info, "re-materialised")


def _check_saved(store: ResultStore, saved: Path) -> None:
    """Saved weights are taken only with the sha256 recorded when they were saved (issue 29): a tampered or foreign
    file is refused in one line, never loaded."""
    expected = ((seal.load(store.root) or {}).get("files") or {}).get(f"models/{saved.name}")
    if expected is None or seal.sha256_file(saved) != expected:
        why = "no sha256 was recorded for it" if expected is None else "its sha256 is not the one recorded at save"
        raise StmedfmError(f"'{saved}' is not the model this store saved ({why}); delete it and load again to "
                           f"re-materialise it from its run.")


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` with every failure (damaged file, foreign pickle: UnpicklingError) as one
    line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise StmedfmError(f"Cannot load '{path}' ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                           f"delete it and rerun what wrote it.") from None


def _load_export(folder, task: str | None) -> TrainedModel:
    config = hub.read_config(folder)
    try:
        model = hub.STMedFMHub.from_pretrained(folder)
    except RuntimeError as exc:  # safetensors' strict load: tensors missing, extra or of another shape
        raise StmedfmError(f"{folder}: the weights do not fit its config.json ({' '.join(str(exc).split())[:200]}); "
                           f"export it again.") from None
    task = task or config.get("task") or next(iter(config["heads"]))
    if task not in model.heads:
        raise StmedfmError(f"{folder} has no head for '{task}'; its heads: {', '.join(model.heads)}.")
    cfg = StudyConfig.from_dict(config["study_config"])
    if config.get("spec"):
        spec = RunSpec(**{**config["spec"], "pretrain": tuple(config["spec"]["pretrain"])})
    else:  # a backbone: the spec of its pretraining, read on the head asked for
        spec = RunSpec(task, "pretrained", config["seed"], cfg.pretrain_steps, cfg.pretrain_lr, cfg.class_weights,
                       pretrain=tuple(cfg.pretrain_tasks))
    return TrainedModel(model, cfg, spec, config.get("run_id") or config.get("pretrain_job", ""),
                        registry.get(task), "exported")


def _same(a: float, b: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
