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

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from stmedfm import registry
from stmedfm.errors import StmedfmError

PAPER_TASKS = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d")
STRATEGY_NAMES = ("scratch", "full", "lora", "adapter", "linear_probe")
SAMPLERS = ("proportional", "uniform", "temperature", "all_tasks")
FLIP_POLICIES = ("all", "label_safe")


@dataclass
class StudyConfig:
    """All parameters of one study. Defaults reproduce the STMedFM paper exactly."""

    # --- identity and data -------------------------------------------------------------------------------
    study: str = "paper"  #: name of the study: results go to results/<study>/, figures to figures/<study>/
    data_dir: str | None = None  #: directory with {flag}.npz; None = $STMEDFM_DATA, then ~/.medmnist
    image_size: int = 28  #: 28, or a MedMNIST+ size (64, 128, 224; 3D flags: 64)
    seeds: list[int] = field(default_factory=lambda: [0])  #: every experiment runs once per seed
    workers: int | None = None  #: worker processes (one torch thread each); None = CPU cores
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
    lora_alpha: float = 4.0  #: LoRA scaling = alpha / r = 1.0 (see stmedfm.peft)
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
    #: (OrganMNIST*: 'kidney-left'), because mirroring swaps their labels (see README, "Flips and laterality")
    flip_policy: str = "all"

    # --- downstream transfer (Tables 5-8b) ---------------------------------------------------------------------
    downstream_tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))
    scratch_steps_2d: int = 150
    scratch_steps_3d: int = 80
    finetune_steps_2d: int = 120
    finetune_steps_3d: int = 50
    lr_scratch: float = 2e-3
    lr_full: float = 1.5e-3
    lr_peft: float = 2e-3  #: LoRA and adapters
    lr_linear_probe: float = 2e-3
    temperature_scaling: bool = True  #: fit T on validation logits; report ECE/Brier/NLL before and after

    # --- few-shot (Tables 9, 10, 10b) ------------------------------------------------------------------------
    fewshot_tasks: dict[str, int] = field(default_factory=lambda: {"dermamnist": 40, "organmnist3d": 10})
    fewshot_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    fewshot_splits: int = 3
    fewshot_strategies: list[str] = field(default_factory=lambda: ["full", "lora", "adapter"])

    # --- ablations (Tables 11, 12, 12b) ------------------------------------------------------------------------
    class_weight_ablation_tasks: list[str] = field(default_factory=lambda: ["dermamnist"])
    class_weight_ablation_strategies: list[str] = field(default_factory=lambda: ["scratch", "full", "lora", "adapter"])
    leave_out_tasks: list[str] = field(default_factory=lambda: ["organmnist3d"])
    leave_out_strategies: list[str] = field(default_factory=lambda: ["lora", "adapter"])
    extended_tasks: list[str] = field(default_factory=lambda: ["organmnist3d"])
    extended_scratch_steps: int = 240
    extended_full_steps: int = 150

    # --- beyond the paper (stmedfm.beyond; off by default) ---------------------------------------------------
    budget_tasks: dict[str, list[int]] = field(default_factory=dict)  #: task -> downstream step counts
    budget_strategies: list[str] = field(default_factory=lambda: ["scratch", "full", "lora", "adapter"])
    data_fraction_tasks: list[str] = field(default_factory=list)  #: tasks trained on fractions of their train split
    data_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    data_fraction_strategies: list[str] = field(default_factory=lambda: ["scratch", "linear_probe", "full"])
    data_fraction_repeats: int = 3  #: stratified subsets per (seed, task, fraction), seeded by all four

    # --- outputs ---------------------------------------------------------------------------------------------
    calibration_task: str | None = "pathmnist"  #: per-class report, reliability diagram, confusion matrix
    calibration_strategy: str = "full"
    eval_max_samples: int | None = None  #: evaluate on a fixed subset (smoke runs only; None = full splits)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudyConfig":
        """Build from a mapping, rejecting unknown keys (with the closest known key suggested)."""
        known = cls.keys()
        for key in values:
            if key not in known:
                raise StmedfmError(
                    f"Unknown parameter '{key}'.{registry.closest(key, known)} "
                    f"Parameters are the fields of stmedfm.config.StudyConfig: {', '.join(known)}."
                )
        cfg = cls(**{k: _coerce(k, v) for k, v in values.items()})
        return cfg.validate()

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

    def validate(self) -> "StudyConfig":
        """Check every parameter before any work; raise one clear StmedfmError for the first problem."""
        def positive(name: str, value) -> None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise StmedfmError(f"Parameter '{name}' must be a positive number, got {value!r}.")

        registry.check_size(self.image_size)
        if not self.seeds:
            raise StmedfmError("Parameter 'seeds' must name at least one seed (e.g. seeds: 5 or seeds: [0, 1]).")
        if self.workers is not None:
            positive("workers", self.workers)
        for name in ("pretrain_steps", "scratch_steps_2d", "scratch_steps_3d", "finetune_steps_2d",
                     "finetune_steps_3d", "extended_scratch_steps", "extended_full_steps", "batch_size_2d",
                     "batch_size_3d", "eval_batch_size_2d", "eval_batch_size_3d", "fewshot_splits", "width",
                     "lora_r", "adapter_bottleneck", "pretrain_lr", "lr_scratch", "lr_full", "lr_peft",
                     "lr_linear_probe", "lora_alpha", "sampling_alpha", "data_fraction_repeats"):
            positive(name, getattr(self, name))
        if self.weight_decay < 0:
            raise StmedfmError(f"Parameter 'weight_decay' must be >= 0, got {self.weight_decay}.")
        if self.eval_max_samples is not None:
            positive("eval_max_samples", self.eval_max_samples)
        lo, hi = self.class_weight_clip
        if not 0 < lo <= hi:
            raise StmedfmError(f"Parameter 'class_weight_clip' must be [low, high] with 0 < low <= high, got {self.class_weight_clip}.")
        if self.flip_policy not in FLIP_POLICIES:
            raise StmedfmError(f"Unknown flip_policy '{self.flip_policy}'.{registry.closest(self.flip_policy, FLIP_POLICIES)} "
                               f"Choose one of {', '.join(FLIP_POLICIES)}.")
        if self.task_sampling not in SAMPLERS:
            raise StmedfmError(f"Unknown task_sampling '{self.task_sampling}'.{registry.closest(self.task_sampling, SAMPLERS)} "
                               f"Choose one of {', '.join(SAMPLERS)}.")

        for name in ("pretrain_tasks", "downstream_tasks", "class_weight_ablation_tasks", "leave_out_tasks",
                     "extended_tasks", "data_fraction_tasks"):
            for flag in getattr(self, name):
                self._check_flag(name, flag)
        if not isinstance(self.budget_tasks, dict):
            raise StmedfmError("Parameter 'budget_tasks' must map a task to a list of step counts, "
                               "e.g. {retinamnist: [30, 120, 450]}.")
        for flag, budgets in self.budget_tasks.items():
            self._check_flag("budget_tasks", flag)
            if not isinstance(budgets, list) or not budgets:
                raise StmedfmError(f"'budget_tasks.{flag}' must be a non-empty list of step counts, got {budgets!r}.")
            for steps in budgets:
                if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
                    raise StmedfmError(f"'budget_tasks.{flag}' step counts must be positive integers, got {steps!r}.")
        for f in self.data_fractions:
            if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
                raise StmedfmError(f"Parameter 'data_fractions' holds fractions of the train split in (0, 1] "
                                   f"(0.01 = 1 %), got {f!r}.")
        for flag, steps in self.fewshot_tasks.items():
            self._check_flag("fewshot_tasks", flag)
            positive(f"fewshot_tasks.{flag}", steps)
        if not self.pretrain_tasks and (self.uses_pretraining()):
            raise StmedfmError("Parameter 'pretrain_tasks' is empty but the study has pretrained strategies; "
                               "name at least one pretraining task or use only 'scratch'.")
        for name in ("strategies", "fewshot_strategies", "class_weight_ablation_strategies", "leave_out_strategies",
                     "budget_strategies", "data_fraction_strategies"):
            for s in getattr(self, name):
                if s not in STRATEGY_NAMES:
                    raise StmedfmError(f"Unknown strategy '{s}' in '{name}'.{registry.closest(s, STRATEGY_NAMES)} "
                                       f"Strategies: {', '.join(STRATEGY_NAMES)}.")
        if "scratch" in self.fewshot_strategies or "scratch" in self.leave_out_strategies:
            raise StmedfmError("Few-shot and leave-out studies adapt a pretrained model; 'scratch' is not allowed "
                               "in 'fewshot_strategies' or 'leave_out_strategies'.")
        for k in self.fewshot_k:
            positive("fewshot_k", k)
        for flag in self.leave_out_tasks:
            if flag not in self.pretrain_tasks:
                raise StmedfmError(
                    f"'leave_out_tasks' names '{flag}', which is not a pretraining task "
                    f"(pretrain_tasks: {', '.join(self.pretrain_tasks)}); only a pretrained task can be left out.")
            if len(self.pretrain_tasks) < 2:
                raise StmedfmError("'leave_out_tasks' needs at least two pretraining tasks (one must remain).")
        if self.calibration_task is not None:
            self._check_flag("calibration_task", self.calibration_task)
            if self.calibration_task not in self.downstream_tasks:
                raise StmedfmError(f"'calibration_task' is '{self.calibration_task}', which is not a downstream task "
                                   f"(downstream_tasks: {', '.join(self.downstream_tasks)}).")
            if self.calibration_strategy not in self.strategies:
                raise StmedfmError(f"'calibration_strategy' is '{self.calibration_strategy}', which is not in "
                                   f"'strategies' ({', '.join(self.strategies)}).")
        return self

    def uses_pretraining(self) -> bool:
        return bool(
            set(self.strategies) - {"scratch"}
            or self.fewshot_tasks
            or self.leave_out_tasks
            or self.extended_tasks
            or set(self.class_weight_ablation_strategies) - {"scratch"}
            or (self.budget_tasks and set(self.budget_strategies) - {"scratch"})
            or (self.data_fraction_tasks and set(self.data_fraction_strategies) - {"scratch"})
        )

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
        if strategy == "scratch":
            return self.scratch_steps_3d if three_d else self.scratch_steps_2d
        return self.finetune_steps_3d if three_d else self.finetune_steps_2d

    def lr(self, strategy: str) -> float:
        return {"scratch": self.lr_scratch, "full": self.lr_full, "lora": self.lr_peft, "adapter": self.lr_peft,
                "linear_probe": self.lr_linear_probe}[strategy]

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
    except yaml.YAMLError as exc:
        raise StmedfmError(f"Parameter file '{p}' is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise StmedfmError(f"Parameter file '{p}' must hold a mapping of parameter: value.")
    return values


def _coerce(key: str, value: Any) -> Any:
    """Accept the forms a user naturally writes: ``seeds: 5`` means seeds 0..4; strings from the command line."""
    if isinstance(value, str) and key != "study" and key not in ("data_dir",):
        value = yaml.safe_load(value) if value.strip() else value
    if key == "seeds":
        if isinstance(value, bool):
            raise StmedfmError(f"Parameter 'seeds' must be a count or a list of integers, got {value!r}.")
        if isinstance(value, int):
            if value <= 0:
                raise StmedfmError(f"Parameter 'seeds' must be positive, got {value}.")
            return list(range(value))
        return [int(v) for v in value]
    if key in ("pretrain_tasks", "downstream_tasks", "strategies", "fewshot_strategies", "leave_out_tasks",
               "class_weight_ablation_tasks", "class_weight_ablation_strategies", "leave_out_strategies",
               "extended_tasks", "budget_strategies", "data_fraction_tasks", "data_fraction_strategies") \
            and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if key in ("fewshot_tasks", "budget_tasks") and value is None:
        return {}
    if key == "data_fractions" and isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if key in ("pretrain_tasks", "downstream_tasks") and value is None:
        return []
    return value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``['seeds=5', 'pretrain_steps=10']`` -> dict; values parsed as YAML (numbers, lists, mappings)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise StmedfmError(f"Override '{pair}' must look like key=value (for example -p seeds=5).")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def from_namespace(params: str | os.PathLike, namespace: dict[str, Any]) -> StudyConfig:
    """The config of a notebook: the parameter file ``params`` overridden by every variable of ``namespace``
    named like a field (this is how papermill's ``-p key value`` reaches the study).

    The ``parameters`` cell of a notebook defines only ``params`` (the file), so nothing a notebook sets for
    itself can leak into a run with another parameter file. A relative ``params`` path is resolved against the
    current directory, then the project root (notebooks run in ``notebooks/``).
    """
    from stmedfm import paths

    path = Path(params)
    if not path.is_absolute() and not path.is_file():
        path = paths.project_root() / path
    known = set(StudyConfig.keys())
    overrides = {k: v for k, v in namespace.items() if k in known and not k.startswith("_")}
    return StudyConfig.load(path, overrides)
