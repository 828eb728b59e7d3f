"""What a study computes, and under which identity: the runs its parameters plan, and whether their files are here.

* :func:`stmedfm.core.records.plan` turns a :class:`~stmedfm.core.config.StudyConfig` into pretraining jobs and downstream
  runs (no torch); here, each gets its identity (:func:`run_id`, :func:`job_id`). A run is identified
  by what defines it (task, strategy, steps, lr, class weights, starting checkpoint, K, split, seed, the training
  fields of the config, and the bytes of its data when they are not the official file), not by the experiment
  that asked for it: Table 11's "weights on" rows *are* Table 5's runs, and run once.
* :func:`preflight` is everything that can fail before training (files missing or corrupt, K larger than a
  class), so a study stops at once, with one message, instead of after an hour.

Nothing here reads or writes a result store (:mod:`stmedfm.run.store`) or runs anything (:mod:`stmedfm.run.study`): an
identity must not depend on where a run is kept or how it is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping

import torch

from stmedfm import data as D
from stmedfm.core import options, paths, registry, strategies
from stmedfm.data import download
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.model.peft import count_parameters, prepare
from stmedfm.model.precision import NATIVE_CPU_FLAGS, identity_name, native_cpu_bf16, resolve
from stmedfm.core.records import PlannedRun, PretrainJob, RunSpec

#: Config fields that change what a run computes (besides its RunSpec). Changing one gives new run ids.
TRAINING_FIELDS = (
    "image_size", "width", "ln_affine", "batch_size_2d", "batch_size_3d", "weight_decay", "class_weight_clip",
    "augment", "temperature_scaling", "eval_max_samples",
)
#: What the shared method fields (``lora_r``, ``lora_alpha``, ``adapter_bottleneck``) put into *every* run's
#: identity: their paper values, as constants. Decision: before issue 32 every id held the config's values, so
#: Scratch was renamed when LoRA's rank changed; now a method's options enter only its own runs' ids (as the
#: options that differ from its registered defaults, :func:`stmedfm.core.options.overrides`), and these constants keep
#: every id computed before (all of them at the paper's values) byte-identical.
LEGACY_METHOD_FIELDS = {"lora_r": 4, "lora_alpha": 4.0, "adapter_bottleneck": 16}
PRETRAIN_FIELDS = (
    "image_size", "width", "ln_affine", "batch_size_2d", "batch_size_3d", "weight_decay", "class_weights",
    "class_weight_clip", "augment", "pretrain_steps", "pretrain_lr", "task_sampling", "sampling_alpha",
    "loss_log_normalise",
)



#: Fields added after the first reference results: part of an identity only when not at their default, so
#: adding them did not change the identity of any finished run. LATER_RUN_FIELDS change evaluation only.
#: ``precision`` enters as what it resolves to on this machine (``auto`` without native bf16 *is* fp32).
LATER_FIELDS = {"flip_policy": "all", "precision": "fp32"}
LATER_RUN_FIELDS = {"eval_batch_size_2d": 256, "eval_batch_size_3d": 32}

#: The identity of every data file a study reads, flag -> :class:`stmedfm.data.FileIdentity` (see :func:`study_data`).
StudyData = Mapping[str, D.FileIdentity]


def _later(cfg: StudyConfig, name: str):
    if name == "precision":
        return identity_name(cfg.precision)
    return getattr(cfg, name)


def _fields(cfg: StudyConfig, names, later=LATER_FIELDS) -> dict:
    fields = {f: getattr(cfg, f) for f in names}
    fields.update({f: _later(cfg, f) for f, default in later.items() if _later(cfg, f) != default})
    return fields


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_data(cfg: StudyConfig) -> dict[str, D.FileIdentity]:
    """Locate and verify every file of the study; their identities (what run identities are built from)."""
    return {t: D.identify(t, cfg.image_size, cfg.data_dir) for t in cfg.all_tasks()}


def official_data(cfg: StudyConfig) -> dict[str, D.FileIdentity]:
    """The identities the study's files have when they are the official ones (no file is read): for planning and
    tests on machines without the data."""
    return {t: D.FileIdentity(t, cfg.image_size, "official", f"md5:{registry.get(t).md5.get(cfg.image_size)}")
            for t in cfg.all_tasks()}


def _data_fields(data: StudyData, tasks) -> dict[str, str]:
    """The digests of the files among ``tasks`` that are not the official ones. Decision: an official file is
    already named by (flag, image size), which every identity holds, so only other bytes (derived, subset or
    synthetic files) enter an identity; runs on the official files keep the ids they had before data entered
    identities, and any other bytes can never reuse them."""
    missing = [t for t in tasks if t not in data]
    if missing:
        raise KeyError(f"no data identity for {missing}")
    return {t: data[t].digest for t in tasks if not data[t].official}


def job_id(cfg: StudyConfig, job: PretrainJob, data: StudyData) -> str:
    """Identity of a pretraining job (its checkpoint): seed, tasks, the pretraining fields of the config, its data."""
    fields = _fields(cfg, PRETRAIN_FIELDS)
    if cfg.task_sampling != "temperature":
        fields.pop("sampling_alpha")
    files = _data_fields(data, job.tasks)
    if files:
        fields["data"] = files
    return "pretrain-" + _digest({"seed": job.seed, "tasks": job.tasks, **fields})


def run_id(cfg: StudyConfig, spec: RunSpec, data: StudyData) -> str:
    """Identity of a run: its spec, the training fields of the config, its data and its checkpoint's identity."""
    fields = {**_fields(cfg, TRAINING_FIELDS, {**LATER_FIELDS, **LATER_RUN_FIELDS}), **LEGACY_METHOD_FIELDS}
    files = _data_fields(data, [spec.task])
    if files:
        fields["data"] = files
    ckpt = job_id(cfg, PretrainJob(spec.seed, spec.pretrain), data) if spec.pretrain else None
    method = strategies.get(spec.strategy).peft
    if method is not None:  # a peft method's config is part of what the run computes (only these ids hold it)
        fields["peft"] = method.describe()
    own = options.overrides(cfg, spec.strategy)  # its own non-default options only: other strategies' never enter
    if own:
        fields["options"] = own
    return "run-" + _digest({**spec.key(), "detail": spec.detail, "cfg": fields, "ckpt": ckpt})


def unique_runs(cfg: StudyConfig, planned: list[PlannedRun], data: StudyData) -> dict[str, PlannedRun]:
    """Run id -> the first planned run with that id: what actually executes (a run shared by experiments, once)."""
    unique: dict[str, PlannedRun] = {}
    for p in planned:
        unique.setdefault(run_id(cfg, p.spec, data), p)
    return unique


def data_kind(data: StudyData) -> str:
    """'synthetic' when any file of the study is synthetic, else 'real'."""
    return "synthetic" if any(i.kind == "synthetic" for i in data.values()) else "real"



# ---------------------------------------------------------------------------------------------------------------
#: What emulated bf16 costs, measured on an AVX2 AMD EPYC without avx512_bf16 / amx_bf16 (issue 29; an earlier
#: measure on the same kind of machine gave 7x, docs/performance.md).
EMULATED_BF16_SLOWDOWN = "10-26x slower than fp32 (measured on an AVX2 AMD EPYC)"


def peft_trainable(cfg: StudyConfig, strategy: str, **sizes) -> int:
    """Trainable parameters of ``strategy`` on the study's first task at ``sizes`` (e.g. lora_r=4). LoRA's and the
    adapters' counts are affine in their size, so a huge size is counted from sizes 1 and 2 (never built)."""
    task = cfg.all_tasks()[0]
    options = {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "adapter_bottleneck": cfg.adapter_bottleneck,
               **sizes}

    def count(**opts) -> int:
        model = STMedFM([task], width=cfg.width, ln_affine=cfg.ln_affine)
        return count_parameters(prepare(model, strategy, task, **{**options, **opts}))[1]

    if len(sizes) != 1:
        return count()
    (name, value), = sizes.items()
    one, two = count(**{name: 1}), count(**{name: 2})
    return one + (value - 1) * (two - one)


def check_limits(cfg: StudyConfig, flags: frozenset[str] | None = None) -> None:
    """Sizes and precisions that cannot be meant, refused before any work unless forced (``allow_large_peft``,
    ``allow_emulated_bf16``): a LoRA rank or adapter bottleneck that trains more parameters than full fine-tuning of
    the whole model, and an explicit ``precision: bf16`` on a CPU that emulates bf16. Here, not in
    :meth:`StudyConfig.validate`: counting needs the model, and the config module stays torch-free."""
    problems = []
    if not cfg.allow_large_peft:
        full = peft_trainable(cfg, "full")
        for name, strategy in (("lora_r", "lora"), ("adapter_bottleneck", "adapter")):
            n = peft_trainable(cfg, strategy, **{name: getattr(cfg, name)})
            if n > full:
                problems.append(f"Parameter '{name}' = {getattr(cfg, name)} makes {strategy} train {n:,} parameters, "
                                f"more than full fine-tuning of the whole model ({full:,}): a parameter-efficient "
                                f"size cannot be meant to be larger than the model. Lower it, or set "
                                f"allow_large_peft: true (-p allow_large_peft=true) to run it anyway.")
    if cfg.precision == "bf16" and not cfg.allow_emulated_bf16:
        chosen = resolve("bf16", flags=flags)
        if chosen.device_type == "cpu" and not native_cpu_bf16(flags):
            problems.append(f"precision: bf16 on this CPU (none of {', '.join(NATIVE_CPU_FLAGS)}) is emulated, "
                            f"{EMULATED_BF16_SLOWDOWN}, with no gain in accuracy. Use precision: fp32 (or auto, "
                            f"which picks fp32 here), or set allow_emulated_bf16: true to run it anyway.")
    if problems:
        raise StmedfmError("\n".join(problems))


class DegenerateSplitWarning(UserWarning):
    """A validation or test split holds a single class: AUROC is undefined on it (and temperature scaling is fitted
    on one class); the tables say so where a cell is empty (:func:`stmedfm.analysis.tables.summarise`)."""


def warn_degenerate(task: D.TaskData) -> None:
    """Name every evaluation split of ``task`` with one class (preflight calls it for every file a study reads)."""
    if task.info.multi_label:
        return
    for name in ("val", "test"):
        present = torch.unique(task[name].labels).tolist() if len(task[name]) else []
        if len(present) == 1:
            c, labels = int(present[0]), task.info.labels
            effect = ("macro AUROC is undefined on it (its table cells stay empty and say why)" if name == "test" else
                      "validation AUROC is undefined and temperature scaling is fitted on one class")
            warnings.warn(DegenerateSplitWarning(
                f"{task.info.flag}: the {name} split of {task.path} holds one class only (class {c}"
                f"{f', {labels[c]!r}' if 0 <= c < len(labels) else ''}): {effect}."), stacklevel=3)


def preflight(cfg: StudyConfig) -> None:
    """Everything that can fail before training: sizes and precisions that cannot be meant (:func:`check_limits`),
    files present and verified, K not larger than any class."""
    check_limits(cfg)
    missing, problems = [], []
    for task in cfg.all_tasks():
        try:
            D.locate(task, size=cfg.image_size, data_dir=cfg.data_dir)
        except StmedfmError:
            folder = paths.data_dirs(cfg.data_dir)[0]
            name = folder / registry.get(task).filename(cfg.image_size)
            if cfg.data_dir is not None and (not folder.is_dir() and not cfg.download or os.path.lexists(name)):
                raise  # the explicit folder is missing or holds something else under the name: its own line
            missing.append(task)
    if missing and cfg.download:
        reason = ""
        for task in list(missing):
            try:
                download.download(task, size=cfg.image_size, data_dir=cfg.data_dir)
            except StmedfmError as exc:  # stop at the first failure: the others would fail the same way
                reason = f" Downloading failed: {exc}"
                break
            missing.remove(task)
    else:
        reason = ""
    if missing:
        size = "" if cfg.image_size == 28 else f" --size {cfg.image_size}"
        dirs = (f"the data folder '{cfg.data_dir}' (--data-dir / data_dir), the only place looked"
                if cfg.data_dir is not None else ", ".join(str(d) for d in paths.data_dirs(cfg.data_dir)))
        fetch = ("" if cfg.download else  # never advise the download that just failed
                 f"Fetch them with `stmedfm download {' '.join(missing)}{size}` (or pass download=True / "
                 f"-p download=true), or, on a machine without internet, ")
        raise StmedfmError(
            f"Study '{cfg.study}' needs {len(missing)} MedMNIST file(s) that are not here: "
            f"{', '.join(registry.get(t).filename(cfg.image_size) for t in missing)} (searched: {dirs}). "
            f"{fetch}{'c' if fetch else 'C'}opy the official files into "
            f"{'that folder' if cfg.data_dir is not None else 'one of those directories'} (or point "
            f"${paths.ENV_DATA} at a directory holding them).{_offline_advice(cfg)}{reason}")
    for task in cfg.all_tasks():
        warn_degenerate(D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir))  # verifies checksum, layout
    if cfg.fewshot_tasks and cfg.fewshot_k:
        k = max(cfg.fewshot_k)
        for task in cfg.fewshot_tasks:
            labels = D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)["train"].labels
            counts = torch.bincount(labels, minlength=registry.get(task).n_classes)
            if int(counts.min()) < k:
                c = int(counts.argmin())
                problems.append(f"'{task}' class {c} has {int(counts[c])} training samples but fewshot_k asks for K={k}")
    if problems:
        raise StmedfmError("Few-shot parameters exceed the data: " + "; ".join(problems) +
                           ". Lower 'fewshot_k' or drop the task from 'fewshot_tasks'.")


def _offline_advice(cfg: StudyConfig) -> str:
    """Advice to run the offline protocol instead, only when its files are all here and it is another study
    (advice never names the study that just failed)."""
    offline = paths.params_dir() / "offline.yaml"
    try:
        other = StudyConfig.load(offline)
        if other.all_tasks() == cfg.all_tasks() or other.study == cfg.study:
            return ""
        for task in other.all_tasks():
            D.locate(task, size=other.image_size, data_dir=cfg.data_dir)
    except StmedfmError:
        return ""
    return (" The files of the offline protocol are here: `make quick` runs its main experiment at one seed in "
            "minutes, `make study PARAMS=params/offline.yaml` in full.")

