"""The study's parameters: one typed, validated object built from YAML, the command line or papermill.

The dataclass defaults *are* the STMedFM paper's protocol (Table 3 and Sections III.D-G), so
``params/paper.yaml`` only restates them. Every field is a flat key, so the same names work in a YAML file, as
``-p key=value`` on the command line and as a variable in a notebook's papermill ``parameters`` cell.
Validation happens once, in :func:`StudyConfig.validate`, before any data is read or any step is trained.

How the paper's roles map to fields (the protocol is data, not code):

==========================  ===========================================================
paper                        field
==========================  ===========================================================
4 pretraining tasks          ``pretrain_tasks``
Tables 5-8b rows             ``downstream_tasks`` x ``strategies``
Tables 9, 10, 10b            ``fewshot_tasks`` (task -> steps), ``fewshot_k``, ``fewshot_splits``
Table 11 (weights on/off)    ``class_weight_ablation_tasks``
Table 12 (2D-only pretrain)  ``leave_out_tasks`` (pretrain without the task, adapt it with
                             ``leave_out_strategies``)
Table 12b (longer budget)    ``extended_tasks``, ``extended_scratch_steps``, ``extended_full_steps``
Table 13, Figures 6-7        ``calibration_task`` under ``calibration_strategy``
beyond: AUROC vs budget      ``budget_tasks`` (task -> step counts) x ``budget_strategies``
beyond: data efficiency      ``data_fraction_tasks`` x ``data_fractions`` x ``data_fraction_strategies``
                             x ``data_fraction_repeats`` (stratified subsets of the train split)
==========================  ===========================================================

The "beyond" fields default to off (empty), so the paper's and the offline parameter files plan exactly the
runs they planned before these fields existed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from stmedfm.core import options as _options
from stmedfm.core import paths, registry
from stmedfm.core import strategies as _strategies
from stmedfm.core.errors import StmedfmError

PAPER_TASKS = registry.PAPER_TASKS  #: defined once, in the registry of flags
#: The fields that name adaptation strategies (each checked against the registry).
STRATEGY_FIELDS = ("strategies", "fewshot_strategies", "class_weight_ablation_strategies", "leave_out_strategies",
                   "budget_strategies", "data_fraction_strategies")
#: The strategies the paper's protocol runs by default (Tables 5-8b, with our linear probe); every registered
#: strategy (stmedfm.core.strategies) is accepted.
STRATEGY_NAMES = (*_strategies.PAPER, "linear_probe")
SAMPLERS = ("proportional", "uniform", "temperature", "all_tasks")
FLIP_POLICIES = ("all", "label_safe")
#: A study name: it names folders (results/<study>/), so no separators, no "." or "..".
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
MAX_SEEDS = 10_000
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # stmedfm.model.precision.PRECISIONS (not imported: config stays torch-free)


@dataclass
class StudyConfig:
    """All parameters of one study. Defaults reproduce the STMedFM paper exactly."""

    # --- identity and data -------------------------------------------------------------------------------
    study: str = "paper"  #: name of the study: results go to results/<study>/, figures to figures/<study>/
    data_dir: str | None = None  #: directory with {flag}.npz; None = $STMEDFM_DATA, then ~/.medmnist
    image_size: int = 28  #: 28, or a MedMNIST+ size (64, 128, 224; 3D flags: 64)
    seeds: list[int] = field(default_factory=lambda: [0])  #: every experiment runs once per seed
    workers: int | None = None  #: worker processes (one torch thread each); None = CPU cores
    #: a Dask scheduler to run on (tcp://HOST:8786, docs/cluster.md); None = $DASK_SCHEDULER_ADDRESS, else the
    #: local pool of ``workers`` processes; 'local' = that pool even when the variable is set. Not part of any run's
    #: identity: where a run computes never changes its numbers
    scheduler: str | None = None
    download: bool = False  #: fetch missing official files before the study (explicit consent)

    # --- multi-task pretraining (Table 3, Section III.D) ------------------------------------------------------
    pretrain_tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    pretrain_steps: int = 200
    pretrain_lr: float = 2e-3
    task_sampling: str = "proportional"  #: proportional (paper) | uniform | temperature | all_tasks (UMedPT)
    sampling_alpha: float = 0.5  #: exponent of the temperature sampler, p ∝ n^alpha
    loss_log_normalise: bool = False  #: divide each task's loss by log(C) (UMedPT)

    # --- model --------------------------------------------------------------------------------------------
    width: int = 64  #: encoder width (the paper's 64; Table 4 counts hold only at 64)
    ln_affine: bool = True  #: LayerNorms with learnable scale/shift
    lora_r: int = 4
    lora_alpha: float = 4.0  #: LoRA scaling = alpha / r = 1.0 (see stmedfm.model.peft)
    adapter_bottleneck: int = 16

    # --- optimisation shared by every stage (Table 3) -----------------------------------------------------------
    batch_size_2d: int = 32
    batch_size_3d: int = 8
    eval_batch_size_2d: int = 256
    eval_batch_size_3d: int = 32
    weight_decay: float = 1e-4
    class_weights: bool = True  #: inverse-frequency class weights, clipped to class_weight_clip, renormalised
    class_weight_clip: list[float] = field(default_factory=lambda: [0.1, 5.0])
    augment: bool = True  #: random flips during training
    #: 'all' (paper): flips for every task; 'label_safe': no flips for flags whose classes name a body side
    #: (OrganMNIST*: 'kidney-left'), because mirroring swaps their labels (see docs/flips.md)
    flip_policy: str = "all"
    #: fp32 (default: the reference numbers) | bf16 (autocast, fp32 weights, optimiser, loss and metrics) | auto
    #: (bf16 where the device runs it natively, fp16 + gradient scaler on a CUDA GPU without bf16, else fp32;
    #: see stmedfm.model.precision). Part of a run's identity only when it is not fp32.
    precision: str = "fp32"
    #: sanity limits (checked before any work by stmedfm.run.planning.check_limits; not part of any run's identity):
    #: a LoRA rank or adapter bottleneck whose trainable count exceeds the whole model's is refused unless this is
    #: true; so is an explicit ``precision: bf16`` on a CPU that emulates bf16 (10-26x slower) unless the next one is
    allow_large_peft: bool = False
    allow_emulated_bf16: bool = False

    # --- downstream transfer (Tables 5-8b) ---------------------------------------------------------------------
    downstream_tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))
    #: a module whose ``stmedfm.core.strategies.register`` calls add strategies named here (docs/strategies.md); imported
    #: before names are checked, by the client and every worker (each rebuilds the config with from_dict)
    strategies_module: str | None = None
    scratch_steps_2d: int = 150
    scratch_steps_3d: int = 80
    finetune_steps_2d: int = 120
    finetune_steps_3d: int = 50
    lr_scratch: float = 2e-3
    lr_full: float = 1.5e-3
    lr_peft: float = 2e-3  #: LoRA and adapters
    lr_linear_probe: float = 2e-3
    #: per-strategy hyperparameters, e.g. {vera: {lr: 2e-2}, lora: {r: 8}} (stmedfm.core.options: each strategy's own
    #: options, validated against its registry entry; unset ones keep the shared fields above)
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    temperature_scaling: bool = True  #: fit T on validation logits; report ECE/Brier/NLL before and after

    # --- few-shot (Tables 9, 10, 10b) ------------------------------------------------------------------------
    fewshot_tasks: dict[str, int] = field(default_factory=lambda: {"dermamnist": 40, "organmnist3d": 10})
    fewshot_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    fewshot_splits: int = 3
    fewshot_strategies: list[str] = field(default_factory=lambda: list(_strategies.PAPER_PRETRAINED))

    # --- ablations (Tables 11, 12, 12b) ------------------------------------------------------------------------
    class_weight_ablation_tasks: list[str] = field(default_factory=lambda: ["dermamnist"])
    class_weight_ablation_strategies: list[str] = field(default_factory=lambda: list(_strategies.PAPER))
    leave_out_tasks: list[str] = field(default_factory=lambda: ["organmnist3d"])
    leave_out_strategies: list[str] = field(default_factory=lambda: list(_strategies.PAPER_PEFT))
    extended_tasks: list[str] = field(default_factory=lambda: ["organmnist3d"])
    extended_scratch_steps: int = 240
    extended_full_steps: int = 150

    # --- beyond the paper (variant studies, stmedfm.analysis.variants; off by default) -------------------------------
    budget_tasks: dict[str, list[int]] = field(default_factory=dict)  #: task -> downstream step counts
    budget_strategies: list[str] = field(default_factory=lambda: list(_strategies.PAPER))
    data_fraction_tasks: list[str] = field(default_factory=list)  #: tasks trained on fractions of their train split
    data_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    data_fraction_strategies: list[str] = field(default_factory=lambda: [_strategies.SCRATCH, "linear_probe", _strategies.FULL])
    data_fraction_repeats: int = 3  #: stratified subsets per (seed, task, fraction), seeded by all four

    # --- fair comparisons (issue 28; off by default) ---------------------------------------------------------
    #: strategy -> learning rates tried on validation (a list, or 'default': stmedfm.core.options.default_grid; the whole
    #: field 'default' = every strategy of 'strategies'); the transfer runs then train at the selected one
    lr_grid: dict[str, list[float]] = field(default_factory=dict)
    lr_selection_seeds: list[int] = field(default_factory=list)  #: seeds of the selection runs, disjoint from 'seeds'
    equivalence_margin: float = 0.01  #: TOST margin of "equivalent" (AUROC units; stmedfm.core.stats.tost)
    #: the claims' tasks by name, e.g. {small: adrenalmnist3d} (keys dominant, small; default: by pretraining size,
    #: stmedfm.analysis.report.claim_roles), so a flag that is no pretraining task (held out) can take a role
    claim_roles: dict[str, str] = field(default_factory=dict)

    # --- outputs ---------------------------------------------------------------------------------------------
    calibration_task: str | None = "pathmnist"  #: per-class report, reliability diagram, confusion matrix
    calibration_strategy: str = "full"
    eval_max_samples: int | None = None  #: evaluate on a fixed subset (smoke runs only; None = full splits)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "StudyConfig":
        """Build from a mapping: unknown keys, wrong types and bad values are all reported at once, one line each
        (the key, the value, what is expected, "did you mean" for names), before any work."""
        if not isinstance(values, Mapping):
            raise StmedfmError(f"Parameters must be a mapping of name: value, got {type(values).__name__}.")
        known = cls.keys()
        module = values.get("strategies_module")
        errors = []
        if isinstance(module, str) and module.strip():
            try:
                _strategies.import_module(module.strip())
            except StmedfmError as exc:
                errors.append(str(exc))
        errors += [f"Unknown parameter '{key}'.{registry.closest(str(key), known)} Parameters are the fields of "
                  f"stmedfm.core.config.StudyConfig (see `stmedfm config --help`)." for key in values if key not in known]
        try:
            cfg = cls(**{k: v for k, v in values.items() if k in known}).validate()
        except StmedfmError as exc:
            errors.append(str(exc))
        if errors:
            raise StmedfmError("\n".join(errors))
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> "StudyConfig":
        """Read a YAML parameter file (None = the paper's defaults), apply overrides, validate."""
        values: dict[str, Any] = {}
        if path is not None:
            values = read_params_file(path)
            values.setdefault("study", Path(path).stem)
        values.update(overrides or {})
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "StudyConfig":
        """A validated copy with some fields changed (unknown names rejected)."""
        return StudyConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------------------------------------------------
    def all_tasks(self) -> list[str]:
        """Every flag the study reads, in first-mention order."""
        out: list[str] = []
        for t in [*self.pretrain_tasks, *self.downstream_tasks, *self.fewshot_tasks,
                  *self.class_weight_ablation_tasks, *self.leave_out_tasks, *self.extended_tasks,
                  *self.budget_tasks, *self.data_fraction_tasks]:
            if t not in out:
                out.append(t)
        return out

    def is_smoke(self) -> bool:
        """Whether this study's numbers are smoke numbers, never results: evaluated on a subset of the test split
        (``eval_max_samples``). Its tables and figures say so and show no paper deltas."""
        return self.eval_max_samples is not None

    def validate(self) -> "StudyConfig":
        """Check every parameter before any work: first each field's type (values are normalised in place, e.g.
        ``seeds: 3`` -> [0, 1, 2], ``'2e-3'`` -> 0.002), then ranges and cross-field rules. Every problem found is
        reported in one StmedfmError, one line each."""
        errors: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, _typed(f.name, value))
            except _Invalid as exc:
                errors.append(f"Parameter '{f.name}' must be {exc}, got {value!r}.")
        if errors:  # the rules below assume the types
            raise StmedfmError("\n".join(errors))
        self._canonical_flags(errors)
        self._check_values(errors)
        self._check_tasks(errors)
        if errors:
            raise StmedfmError("\n".join(dict.fromkeys(errors)))
        return self

    def _check_values(self, errors: list[str]) -> None:
        """Ranges of single fields (counts, rates, names of choices); problems appended to ``errors``."""
        if len(self.seeds) > MAX_SEEDS:
            errors.append(f"Parameter 'seeds' asks for {len(self.seeds)} seeds; at most {MAX_SEEDS}.")
        if self.width > 4096:
            errors.append(f"Parameter 'width' must be at most 4096, got {self.width}.")
        if not STUDY_NAME.match(self.study) or self.study in (".", "..") or len(self.study) > 100:
            errors.append(f"Parameter 'study' must be a name of at most 100 letters, digits, '-' and '_' (starting with "
                          f"a letter or digit; no path separators), got {self.study!r}: it names results/<study>/.")
        _collect(errors, registry.check_size, self.image_size)
        if self.workers is not None:
            _positive(errors, "workers", self.workers)
        for name in ("pretrain_steps", "scratch_steps_2d", "scratch_steps_3d", "finetune_steps_2d",
                     "finetune_steps_3d", "extended_scratch_steps", "extended_full_steps", "batch_size_2d",
                     "batch_size_3d", "eval_batch_size_2d", "eval_batch_size_3d", "fewshot_splits", "width",
                     "lora_r", "adapter_bottleneck", "pretrain_lr", "lr_scratch", "lr_full", "lr_peft",
                     "lr_linear_probe", "lora_alpha", "sampling_alpha", "data_fraction_repeats"):
            _positive(errors, name, getattr(self, name))
        if self.weight_decay < 0:
            errors.append(f"Parameter 'weight_decay' must be >= 0, got {self.weight_decay}.")
        if self.eval_max_samples is not None:
            _positive(errors, "eval_max_samples", self.eval_max_samples)
        if len(self.class_weight_clip) != 2 or not 0 < self.class_weight_clip[0] <= self.class_weight_clip[1]:
            errors.append(f"Parameter 'class_weight_clip' must be [low, high] with 0 < low <= high, "
                          f"got {self.class_weight_clip}.")
        if self.flip_policy not in FLIP_POLICIES:
            errors.append(f"Unknown flip_policy '{self.flip_policy}'.{registry.closest(self.flip_policy, FLIP_POLICIES)} "
                          f"Choose one of {', '.join(FLIP_POLICIES)}.")
        if self.precision not in PRECISIONS:
            errors.append(f"Unknown precision '{self.precision}'.{registry.closest(str(self.precision), PRECISIONS)} "
                          f"Choose one of fp32, bf16, auto (fp16: CUDA only).")
        if self.task_sampling not in SAMPLERS:
            errors.append(f"Unknown task_sampling '{self.task_sampling}'.{registry.closest(self.task_sampling, SAMPLERS)} "
                          f"Choose one of {', '.join(SAMPLERS)}.")

    def _check_tasks(self, errors: list[str]) -> None:
        """Flags, strategies and the rules between fields (budgets, few-shot, leave-out, calibration); problems
        appended to ``errors``."""
        for name in ("pretrain_tasks", "downstream_tasks", "class_weight_ablation_tasks", "leave_out_tasks",
                     "extended_tasks", "data_fraction_tasks"):
            for flag in getattr(self, name):
                _collect(errors, self._check_flag, name, flag)
        for flag, budgets in self.budget_tasks.items():
            _collect(errors, self._check_flag, "budget_tasks", flag)
            if not budgets:
                errors.append(f"'budget_tasks.{flag}' must be a non-empty list of step counts, got {budgets!r}.")
            for steps in budgets:
                if steps <= 0:
                    errors.append(f"'budget_tasks.{flag}' step counts must be positive integers, got {steps!r}.")
        for f in self.data_fractions:
            if not 0 < f <= 1:
                errors.append(f"Parameter 'data_fractions' holds fractions of the train split in (0, 1] "
                              f"(0.01 = 1 %), got {f!r}.")
        for flag, steps in self.fewshot_tasks.items():
            _collect(errors, self._check_flag, "fewshot_tasks", flag)
            _positive(errors, f"fewshot_tasks.{flag}", steps)
        if not self.pretrain_tasks and self.uses_pretraining():
            errors.append("Parameter 'pretrain_tasks' is empty but the study has pretrained strategies; "
                          "name at least one pretraining task or use only 'scratch'.")
        for name in STRATEGY_FIELDS:
            known = _strategies.names()
            for s in getattr(self, name):
                if s not in known:
                    errors.append(f"Unknown strategy '{s}' in '{name}'.{registry.closest(s, known)} "
                                  f"Strategies: {', '.join(known)} (one of your own: register it in a module "
                                  f"named by strategies_module, docs/strategies.md).")
        used = {s for name in STRATEGY_FIELDS for s in getattr(self, name) if s in _strategies.REGISTRY}
        for s in sorted(used, key=_strategies.order):
            if not hasattr(self, _strategies.get(s).lr_field):
                errors.append(f"Strategy '{s}' takes its learning rate from '{_strategies.get(s).lr_field}', "
                              f"which is not a StudyConfig field.")
        peft_methods = [s for s in sorted(used, key=_strategies.order) if _strategies.get(s).peft is not None]
        if peft_methods and importlib.util.find_spec("peft") is None:
            errors.append(f"Strategies {', '.join(peft_methods)} need the peft package: "
                          f"pip install 'stmedfm[peft]' (or pip install peft).")
        fresh = [s for s in [*self.fewshot_strategies, *self.leave_out_strategies]
                 if s in _strategies.REGISTRY and not _strategies.get(s).pretrained]
        if fresh:
            errors.append(f"Few-shot and leave-out studies adapt a pretrained model; '{fresh[0]}' is not allowed "
                          f"in 'fewshot_strategies' or 'leave_out_strategies'.")
        for k in self.fewshot_k:
            _positive(errors, "fewshot_k", k)
        for flag in self.leave_out_tasks:
            if flag not in self.pretrain_tasks:
                errors.append(
                    f"'leave_out_tasks' names '{flag}', which is not a pretraining task "
                    f"(pretrain_tasks: {', '.join(self.pretrain_tasks)}); only a pretrained task can be left out.")
            elif len(self.pretrain_tasks) < 2:
                errors.append("'leave_out_tasks' needs at least two pretraining tasks (one must remain).")
        self._check_fair(errors)
        if self.calibration_task is not None:
            _collect(errors, self._check_flag, "calibration_task", self.calibration_task)
            if self.calibration_task not in self.downstream_tasks:
                errors.append(f"'calibration_task' is '{self.calibration_task}', which is not a downstream task "
                              f"(downstream_tasks: {', '.join(self.downstream_tasks)}).")
            if self.calibration_strategy not in self.strategies:
                errors.append(f"'calibration_strategy' is '{self.calibration_strategy}', which is not in "
                              f"'strategies' ({', '.join(self.strategies)}).")

    def _check_fair(self, errors: list[str]) -> None:
        """Per-strategy options, learning-rate grids (expanded here) and claim roles (:func:`stmedfm.core.options.check_study`)."""
        errors += _options.check_study(self)

    def uses_pretraining(self) -> bool:
        def pretrained(names) -> bool:
            return any(_strategies.get(s).pretrained for s in names if s in _strategies.REGISTRY)

        return bool(
            pretrained(self.strategies)
            or self.fewshot_tasks
            or self.leave_out_tasks
            or self.extended_tasks
            or pretrained(self.class_weight_ablation_strategies)
            or (self.budget_tasks and pretrained(self.budget_strategies))
            or (self.data_fraction_tasks and pretrained(self.data_fraction_strategies))
        )

    def _canonical_flags(self, errors: list[str]) -> None:
        """Flags as the registry spells them ('RetinaMNIST' -> 'retinamnist'), so a task named twice in two
        spellings is caught as a repeat and every later lookup (heads, files) uses one name."""
        def canon(flag: str) -> str:
            try:
                return registry.get(flag).flag
            except StmedfmError:
                return flag  # reported by _check_flag

        for name in ("pretrain_tasks", "downstream_tasks", "class_weight_ablation_tasks", "leave_out_tasks",
                     "extended_tasks", "data_fraction_tasks"):
            flags = [canon(f) for f in getattr(self, name)]
            twice = _repeats(flags)
            if twice:
                errors.append(f"Parameter '{name}' names {', '.join(map(repr, twice))} more than once.")
            setattr(self, name, flags)
        for name in ("fewshot_tasks", "budget_tasks"):
            setattr(self, name, {canon(k): v for k, v in getattr(self, name).items()})
        if self.calibration_task is not None:
            self.calibration_task = canon(self.calibration_task)

    def _check_flag(self, param: str, flag: str) -> None:
        info = registry.get(flag)  # unknown flag -> error with the closest name
        if info.multi_label:
            raise StmedfmError(
                f"'{param}' names '{flag}', a multi-label task ({info.task}); the STMedFM protocol trains "
                f"single-label softmax heads, so multi-label flags are not supported.")
        if info.dim == 3 and self.image_size not in info.md5:
            raise StmedfmError(f"'{param}' names '{flag}', which MedMNIST+ provides at "
                               f"{', '.join(map(str, sorted(info.md5)))} px, not {self.image_size}.")

    # --- per-task budgets -----------------------------------------------------------------------------------------
    def steps(self, task: str, strategy: str) -> int:
        """Training steps of a downstream run: the paper's budgets depend on the task's dimensionality."""
        three_d = registry.get(task).dim == 3
        if not _strategies.get(strategy).pretrained:
            return self.scratch_steps_3d if three_d else self.scratch_steps_2d
        return self.finetune_steps_3d if three_d else self.finetune_steps_2d

    def count_options(self) -> dict[str, Any]:
        """Everything that shapes a model's parameter count, as :func:`stmedfm.model.peft.parameter_table` takes it (so
        every count shown is the count of the model this study trains)."""
        return {"width": self.width, "ln_affine": self.ln_affine, "lora_r": self.lora_r,
                "lora_alpha": self.lora_alpha, "adapter_bottleneck": self.adapter_bottleneck,
                "strategy_options": {s: _options.resolve(self, s) for s in _strategies.names()}}

    def lr(self, strategy: str) -> float:
        """The learning rate of ``strategy``: its ``strategy_options`` ``lr``, else the field its registry entry
        names (``Strategy.lr_field``)."""
        return _options.resolve(self, strategy)["lr"]

    def batch_size(self, task: str) -> int:
        return self.batch_size_3d if registry.get(task).dim == 3 else self.batch_size_2d

    def eval_batch_size(self, task: str) -> int:
        return self.eval_batch_size_3d if registry.get(task).dim == 3 else self.eval_batch_size_2d


def read_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML parameter file, or a StmedfmError saying what is wrong with the file."""
    p = Path(path)
    if not p.is_file():
        raise StmedfmError(f"Parameter file '{p}' does not exist. The project's files are in params/.")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StmedfmError(f"Parameter file '{p}' is not valid YAML text: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise StmedfmError(f"Cannot read parameter file '{p}' ({exc.strerror or exc}).") from None
    if not isinstance(values, dict):
        raise StmedfmError(f"Parameter file '{p}' must hold a mapping of parameter: value.")
    return values


def is_variant_file(doc: Mapping[str, Any]) -> bool:
    """Whether the keys of a parameter file are those of a variant study (:mod:`stmedfm.analysis.variants`) rather than of
    one StudyConfig. Here, beside :func:`read_params_file`, so that telling them apart loads no torch."""
    return "variants" in doc or "extends" in doc


def _positive(errors: list[str], name: str, value) -> None:
    if value <= 0:
        errors.append(f"Parameter '{name}' must be a positive number, got {value!r}.")


def _collect(errors: list[str], fn, *args) -> None:
    """Run a check that raises :class:`StmedfmError`, its message appended to ``errors`` instead (so every problem
    of a parameter file is reported at once)."""
    try:
        fn(*args)
    except StmedfmError as exc:
        errors.append(str(exc))


class _Invalid(Exception):
    """A value of the wrong type; the message says what was expected."""


@lru_cache(maxsize=1)
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(StudyConfig)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a text value", bool: "true or false"}
_INT = re.compile(r"[+-]?\d+\Z")


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
    if origin is dict:
        return f"a mapping of task to {_describe(args[1])} (e.g. {{bloodmnist: ...}})"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) if a is not type(None) else "null" for a in args)
    return _TYPE_NAMES.get(hint, str(hint))


def _as(hint, value: Any) -> Any:
    """``value`` as the type ``hint`` (a field annotation), or :class:`_Invalid`. Accepts what users naturally
    write: '2e-3' for a number (YAML 1.1 reads it as text), 'a,b' for a list of names, null for an empty mapping."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None or (isinstance(value, str) and value.strip() in ("null", "None", "~")):
            return None
        try:
            return _as(next(a for a in args if a is not type(None)), value)
        except _Invalid:
            raise _Invalid(_describe(hint)) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value) if isinstance(value, int) else value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
                if math.isfinite(number):
                    return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            try:
                return [_as(args[0], v) for v in value]
            except _Invalid:
                pass
    elif origin is dict:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            try:
                return {_as(args[0], k): _as(args[1], v) for k, v in value.items()}
            except _Invalid:
                pass
    raise _Invalid(_describe(hint))


def _repeats(values) -> list:
    seen, twice = [], []
    for v in values:
        (twice if v in seen and v not in twice else seen).append(v)
    return [v for v in twice if v in seen]


#: List fields whose entries may repeat (a range); in every other list a repeat would count one run twice.
REPEATABLE = {"class_weight_clip"}


#: Fields keyed by strategy (stmedfm.core.options checks names and values, so every problem gets its own line there).
_NESTED = {"strategy_options": "a mapping of strategy to its options (e.g. {vera: {lr: 0.02}})",
           "lr_grid": "'default' or a mapping of strategy to learning rates (e.g. {lora: [0.001, 0.01, 0.1]})"}


def _scalar(value: Any) -> Any:
    """A number written as text ('2e-2': YAML 1.1 reads it so) as the number; anything else unchanged."""
    if isinstance(value, str):
        if _INT.match(value.strip()):
            return int(value)
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _nested(key: str, value: Any) -> Any:
    if value is None:
        return {}
    if key == "lr_grid" and value == "default":
        return "default"  # expanded by StudyConfig._check_grid, which knows the study's strategies
    if not isinstance(value, Mapping):
        raise _Invalid(_NESTED[key])
    out = {}
    for strategy, inner in value.items():
        if isinstance(inner, Mapping):
            inner = {k: _scalar(v) for k, v in inner.items()}
        elif isinstance(inner, (list, tuple)):
            inner = [_scalar(v) for v in inner]
        out[str(strategy)] = inner
    return out


def _typed(key: str, value: Any) -> Any:
    """The value of field ``key`` in its declared type, no list holding a value twice; :class:`_Invalid` else."""
    if key in _NESTED:
        return _nested(key, value)
    if key == "seeds":
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEEDS:
            return list(range(value))
        if (isinstance(value, (list, tuple)) and value
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            value = list(value)
        else:
            raise _Invalid(f"a positive count (5 = seeds 0..4; at most {MAX_SEEDS}) or a non-empty list of distinct "
                           f"non-negative integers")
    else:
        value = _as(_hints()[key], value)
    lists = [value] if isinstance(value, list) else [v for v in value.values() if isinstance(v, list)] \
        if isinstance(value, dict) else []
    for entries in lists if key not in REPEATABLE else []:
        twice = _repeats(entries)
        if twice:
            raise _Invalid(f"a list without repeats ({', '.join(map(repr, twice))} appears more than once, which "
                           f"would count one run as several samples)")
    return value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``['seeds=5', 'pretrain_steps=10']`` -> dict; values parsed as YAML (numbers, lists, mappings).

    A text field (``study``, ``data_dir``, ...) keeps what was typed: ``-p study=123`` names the study '123', and
    ``-p data_dir=~`` is the home folder (``null`` is how to ask for the default)."""
    out: dict[str, Any] = {}
    text_fields = {k for k, h in _hints().items() if h is str or h == (str | None)}
    for pair in pairs or []:
        if not isinstance(pair, str) or "=" not in pair:
            raise StmedfmError(f"Override '{pair}' must look like key=value (for example -p seeds=5).")
        key, raw = (part.strip() for part in pair.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise StmedfmError(f"Override '{pair}': the value is not valid YAML ({problem}); lists are written "
                               f"[a, b] and mappings {{task: 10}}.") from None
        if key in text_fields and raw and not isinstance(value, str) and (value is not None or
                                                                          (raw == "~" and key == "data_dir")):
            value = raw  # '~' is YAML's null, but as a path (data_dir=~) it means the home folder
        out[key] = value
    return out


#: Names a notebook may hold besides the fields before its config is built: its parameter file, and IPython's own.
NOTEBOOK_NAMES = frozenset({"params", "In", "Out"})


def notebook_overrides(namespace: Mapping[str, Any], known=None) -> dict[str, Any]:
    """The parameters papermill injected into a notebook's namespace: every variable named like a field (of
    ``known``, default all of StudyConfig's). Any other plain value (text, number, list, mapping) can only have been
    injected by mistake (papermill ``-p seed 3``): it is refused, naming the closest parameter, instead of being
    silently ignored. Modules, functions and IPython's own names are not parameters."""
    known = list(StudyConfig.keys() if known is None else known)
    plain = (str, int, float, bool, list, dict, tuple, type(None))
    unknown = [k for k, v in namespace.items() if k not in known and k not in NOTEBOOK_NAMES
               and not k.startswith("_") and isinstance(v, plain)]
    if unknown:
        raise StmedfmError("\n".join(
            f"Unknown notebook parameter '{k}' = {namespace[k]!r}.{registry.closest(k, known)} Notebook parameters "
            f"are 'params' and the fields of stmedfm.core.config.StudyConfig." for k in unknown))
    return {k: v for k, v in namespace.items() if k in known}


def params_path(params: str | os.PathLike) -> Path:
    """Where a parameter file named in a notebook or a variant file is: the path as given when it is absolute or
    exists from the current directory, else relative to the project root (notebooks run in ``notebooks/``, and
    ``base: params/offline.yaml`` is written relative to the root)."""
    path = Path(params)
    return path if path.is_absolute() or path.is_file() else paths.project_root() / path


def notebook_params(params: str | os.PathLike, namespace: Mapping[str, Any], known=None) -> tuple[Path, dict[str, Any]]:
    """(parameter file, overrides) of a notebook: the file ``params`` (:func:`params_path`) and every variable of
    ``namespace`` named like a field of ``known`` (default all of StudyConfig's; :func:`notebook_overrides`).

    The one way a notebook turns its namespace into parameters, for a study (:func:`from_namespace`) and for
    variant studies (:func:`stmedfm.analysis.variants.from_namespace`). The ``parameters`` cell of a notebook defines only
    ``params`` (the file), so nothing a notebook sets for itself can leak into a run with another parameter file;
    a mistyped injected name is refused."""
    if not isinstance(params, (str, os.PathLike)):
        raise StmedfmError(f"Parameter 'params' must be the path of a YAML parameter file, got {params!r}.")
    return params_path(params), notebook_overrides(namespace, known)


def from_namespace(params: str | os.PathLike, namespace: Mapping[str, Any]) -> StudyConfig:
    """The config of a notebook: the parameter file ``params`` overridden by every variable of ``namespace``
    named like a field (this is how papermill's ``-p key value`` reaches the study; :func:`notebook_params`)."""
    return StudyConfig.load(*notebook_params(params, namespace))
