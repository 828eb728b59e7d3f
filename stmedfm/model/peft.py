"""The model surgery behind the adaptation strategies of :mod:`stmedfm.core.strategies` (paper section III.E).

The registry declares each strategy; this module implements the pieces it names: module kinds a strategy inserts
(:data:`INSERTS`) and parameter groups it trains (:data:`GROUPS`). LoRA (Hu et al., 2022) wraps the four encoder
Linear layers (``fc1``/``fc2`` of both blocks) with a rank-``r`` update; adapters (Houlsby et al., 2019) add a
residual bottleneck after each encoder block. Both are initialised so that inserting them leaves the model's
outputs unchanged, which is what makes "Pretrain+PEFT" start exactly from the pretrained function.

The ``'peft'`` insert is generic: it builds the Hugging Face peft config a strategy's
:class:`~stmedfm.core.strategies.PeftMethod` describes (:func:`peft_config`) and injects it into the model in place
(:func:`add_peft`), so the model stays an :class:`~stmedfm.model.STMedFM` (same forward, same stems, same state-dict
layout around the wrapped layers) and every peft method takes the training path of our own LoRA. Its trainable
group ``'peft'`` is exactly the parameters peft lists as the method's own (``adapter_layer_names`` of each tuner
layer). peft is needed only when such a strategy is used (``pip install 'stmedfm[peft]'``).

:func:`prepare` is the single entry point used by training: insert what the strategy needs, then set
``requires_grad``. Call it *after* loading a checkpoint into the plain model, since LoRA moves the wrapped weights to
``...fc1.base.weight`` (peft's methods to ``...fc1.base_layer.weight``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from stmedfm.core import registry, strategies
from stmedfm.core import strategies as strategies_  # parameter_table's argument is named strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM

__all__ = [
    "LoRALinear",
    "Adapter",
    "add_lora",
    "add_adapters",
    "add_peft",
    "peft_config",
    "INSERTS",
    "GROUPS",
    "prepare",
    "set_trainable",
    "count_parameters",
    "parameter_table",
]


class LoRALinear(nn.Module):
    """``base(x) + (x A^T B^T) * alpha / r`` with ``A`` (r, in) and ``B`` (out, r).

    Initialised as in HF ``peft`` (A kaiming-uniform with a=sqrt(5), B zeros), so the update starts at exactly 0
    and the numbers match ``peft.LoraConfig`` with the same ``r`` and ``lora_alpha``.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 4.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise StmedfmError(f"LoRA wraps an nn.Linear, got {type(base).__name__}.")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise StmedfmError(f"LoRA rank r must be a positive integer, got {r!r} (the paper uses r=4).")
        if not alpha > 0:
            raise StmedfmError(f"LoRA alpha must be positive, got {alpha!r} (default alpha=r gives scaling 1).")
        self.base = base
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


class Adapter(nn.Module):
    """Residual bottleneck ``x + up(GELU(down(x)))``; ``up`` starts at zero so insertion is an identity."""

    def __init__(self, width: int = 64, bottleneck: int = 16) -> None:
        super().__init__()
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise StmedfmError(f"Adapter bottleneck must be a positive integer, got {bottleneck!r} (paper: 16).")
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, Adapter) for m in model.modules())


def add_lora(model: STMedFM, r: int = 4, alpha: float = 4.0) -> STMedFM:
    """Wrap ``fc1`` and ``fc2`` of every encoder block with :class:`LoRALinear`, in place; returns ``model``.

    The default ``alpha = r`` (scaling 1.0) is our choice, since the paper gives only r=4: with scaling 1 the
    update's size does not depend on r, so the AdamW learning rate of Table 3 means the same at any rank, and it
    matches HF peft's defaults (lora_alpha=8 with r=8 is also scaling 1). The parameter counts do not depend on
    alpha: 4 layers * r * (64 + 128) = 3,072 LoRA parameters at r=4.
    """
    if _has_lora(model):
        raise StmedfmError("The model already has LoRA layers; add_lora must be called once, on the plain model.")
    for block in model.encoder.blocks:
        block.fc1 = LoRALinear(block.fc1, r=r, alpha=alpha)
        block.fc2 = LoRALinear(block.fc2, r=r, alpha=alpha)
    return model


def add_adapters(model: STMedFM, bottleneck: int = 16) -> STMedFM:
    """Insert one :class:`Adapter` after each encoder block, in place; returns ``model``."""
    if len(model.encoder.adapters):
        raise StmedfmError("The model already has adapters; add_adapters must be called once, on the plain model.")
    w = next(model.encoder.parameters())
    for _ in model.encoder.blocks:
        model.encoder.adapters.append(Adapter(model.width, bottleneck).to(device=w.device, dtype=w.dtype))
    return model


# --- Hugging Face peft methods -----------------------------------------------------------------------------------
def _hf_peft():
    try:
        import peft
    except ImportError:
        raise StmedfmError("This strategy is a method of Hugging Face peft, which is not installed: "
                           "pip install 'stmedfm[peft]' (or `make setup`).") from None
    return peft


def _peft_layers(model: nn.Module) -> list[nn.Module]:
    """The modules peft put in place of the wrapped ones (its tuner layers), in model order."""
    if not hasattr(model, "peft_config"):  # peft marks the models it injected into; ours, before: never imported
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _has_peft(model: nn.Module) -> bool:
    return bool(_peft_layers(model))


def _targets(model: STMedFM, targets: str) -> list[str]:
    """Full module names a peft method wraps: the 4 encoder Linears (what the paper's LoRA wraps), or every LayerNorm."""
    if targets == "linears":
        return [f"encoder.blocks.{i}.{name}" for i in range(len(model.encoder.blocks)) for name in ("fc1", "fc2")]
    return [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


#: Options of a peft config that name modules: written as last names ('fc2') in a PeftMethod, given to peft as the
#: full names of the matching targets (IA3 requires its feed-forward modules to be a subset of its targets).
MODULE_OPTIONS = ("feedforward_modules",)


def peft_config(method: strategies.PeftMethod, model: STMedFM, lora_r: int = 4, lora_alpha: float = 4.0):
    """The peft config object of ``method`` for ``model``: ``target_modules`` = the full names of what it wraps; a
    config with a rank field ``r`` gets ``lora_r`` and one with ``lora_alpha``/``alpha`` gets ``lora_alpha`` (the
    paper's LoRA rank and scaling), unless the method's options set them; then the method's options."""
    hf = _hf_peft()
    cls = getattr(hf, method.config, None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise StmedfmError(f"peft {hf.__version__} has no config class '{method.config}'.")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict = {}
    if "r" in names:
        kwargs["r"] = lora_r
    for alpha in ("lora_alpha", "alpha"):
        if alpha in names:
            kwargs[alpha] = lora_alpha
    targets = _targets(model, method.targets)
    kwargs.update({k: list(v) if isinstance(v, tuple) else v for k, v in method.options})
    for key in MODULE_OPTIONS:  # last names ('fc2') -> the full names of those targets, as peft compares them
        if key in kwargs:
            kwargs[key] = [t for t in targets if t.rsplit(".", 1)[-1] in set(kwargs[key])]
    try:
        return cls(target_modules=targets, **kwargs)
    except (TypeError, ValueError) as exc:  # an option peft does not know or accept: name it in one line
        raise StmedfmError(f"peft {hf.__version__} rejects {method.describe()}: {' '.join(str(exc).split())}") from None


def add_peft(model: STMedFM, method: strategies.PeftMethod, lora_r: int = 4, lora_alpha: float = 4.0) -> STMedFM:
    """Inject the peft ``method`` into ``model`` in place (adapter name 'default'); returns ``model``.

    Why the tuner class and not ``peft.get_peft_model``: the latter wraps the model in a ``PeftModel``, which has
    another forward signature, attribute layout and state-dict prefix than :class:`~stmedfm.model.STMedFM`, so
    training, stem sharing and loading would each need a second path. ``peft.inject_adapter_in_model`` mutates in
    place but refuses methods whose state lives on the tuner (VeRA's shared projections); instantiating the tuner
    class does the same injection for every method, and the injected layers hold what they need (VeRA's layers keep
    references to the shared projection buffers, which are therefore in the model's state dict).
    """
    if _has_peft(model):
        raise StmedfmError("The model already has peft layers; add_peft must be called once, on the plain model.")
    _hf_peft()
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    if method.targets == "layernorms" and not getattr(model, "ln_affine", True):
        raise StmedfmError(f"{method.describe()} trains copies of the LayerNorms' scale and shift, which a model "
                           f"with ln_affine: false does not have; use ln_affine: true or another strategy.")

    config = peft_config(method, model, lora_r, lora_alpha)
    with warnings.catch_warnings():
        # peft's LN-tuning asks its generic in/out-feature helper about the LayerNorms it wraps, which warns
        # "Unsupported layer type ... LayerNorm"; the layer only deep-copies the LayerNorm, which is supported
        warnings.filterwarnings("ignore", message=r"Unsupported layer type .*LayerNorm", category=UserWarning)
        PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](model, config, adapter_name="default")
    return model


def _peft_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The method's own parameters: what each tuner layer lists in ``adapter_layer_names`` (LoRA A/B, DoRA's
    magnitude, VeRA's lambdas, IA3's vectors, LoHa/LoKr factors, LN-tuning's LayerNorm copies). Frozen parts of a
    method (VeRA's projections) are buffers, never parameters; the wrapped base layers are not listed."""
    out: list[nn.Parameter] = []
    for layer in _peft_layers(model):
        for name in layer.adapter_layer_names:
            part = getattr(layer, name, None)
            if isinstance(part, nn.Module):
                out += list(part.parameters())
    return out


def _check_peft(model: nn.Module, strategy: str, method: strategies.PeftMethod | None = None) -> None:
    """The model's peft layers are the strategy's method (say, not DoRA layers prepared for VeRA); ``method``: the
    method with a study's own option values, None = as registered."""
    method = method or strategies.get(strategy).peft
    injected = getattr(model, "peft_config", {}).get("default")
    if method is None or injected is None:
        return

    def same(key, a, b) -> bool:  # peft keeps some list options as sets, of full names for MODULE_OPTIONS
        if isinstance(a, (list, tuple, set)) and isinstance(b, (list, tuple, set)):
            if key in MODULE_OPTIONS:
                a = {str(n).rsplit(".", 1)[-1] for n in a}
            return set(a) == set(b)
        return a == b

    differ = type(injected).__name__ != method.config or not all(
        same(k, getattr(injected, k, None), v) for k, v in method.options)
    if differ:
        raise StmedfmError(f"Strategy '{strategy}' needs {method.describe()}, but the model holds "
                           f"{type(injected).__name__} layers: prepare a plain model for it.")


#: Module kinds a strategy may insert (``Strategy.inserts``): name -> (already inserted?, insert with options).
#: 'peft' inserts the strategy's own peft method (``options['peft']``, a PeftMethod).
INSERTS = {
    "lora": (_has_lora, lambda model, opt: add_lora(model, r=opt["lora_r"], alpha=opt["lora_alpha"])),
    "adapter": (_has_adapters, lambda model, opt: add_adapters(model, bottleneck=opt["adapter_bottleneck"])),
    "peft": (_has_peft, lambda model, opt: add_peft(model, opt["peft"], lora_r=opt["lora_r"],
                                                    lora_alpha=opt["lora_alpha"])),
}
#: What the error says when a strategy's modules are missing.
_INSERT_NAMES = {"lora": "LoRA layers", "adapter": "adapters", "peft": "its peft layers"}


def _modules(model: nn.Module, kind: type) -> list[nn.Parameter]:
    """The parameters of every submodule of type ``kind``."""
    return [p for m in model.modules() if isinstance(m, kind) for p in m.parameters()]


def _layernorms(model: nn.Module) -> list[nn.Parameter]:
    """Every LayerNorm's parameters, except originals that peft's LN-tuning replaced by a trained copy (they no
    longer enter the forward pass, so training them would only inflate the count)."""
    replaced = {id(layer.get_base_layer()) for layer in _peft_layers(model)}
    return [p for m in model.modules() if isinstance(m, nn.LayerNorm) and id(m) not in replaced
            for p in m.parameters()]


#: Parameter groups a strategy may train (``Strategy.trains``): name -> the group's parameters.
GROUPS = {
    "all": lambda model, task: list(model.parameters()),
    "head": lambda model, task: list(model.heads[task].parameters()),
    "layernorm": lambda model, task: _layernorms(model),
    "bias": lambda model, task: [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"],
    "lora": lambda model, task: [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)],
    "adapter": lambda model, task: _modules(model, Adapter),
    "peft": lambda model, task: _peft_parameters(model),
    "own": lambda model, task: [],  # a method's own surgery: set_trainable asks the surgery (Strategy.surgery)
}


def _check_task(model: STMedFM, task: str) -> None:
    if task not in model.heads:
        raise StmedfmError(
            f"The model has no head for task '{task}' (heads: {', '.join(model.heads) or 'none'}); "
            f"add one with model.add_head('{task}') or use stmedfm.model.peft.prepare, which adds it."
        )


def set_trainable(model: STMedFM, strategy: str, task: str, method: strategies.PeftMethod | None = None) -> None:
    """Set ``requires_grad`` for ``strategy`` as its registry entry says (``trains``); everything else is frozen.

    scratch/full: all parameters. lora: LoRA A/B + every LayerNorm + ``heads[task]``. adapter: adapter parameters
    + every LayerNorm + ``heads[task]``. linear_probe: ``heads[task]`` only. bitfit: every bias + LayerNorms + head.
    peft methods: the method's parameters + every LayerNorm + head (LN-tuning: its LayerNorm copies + head).
    LayerNorms without affine parameters simply contribute nothing. Other tasks' heads are frozen, so
    keep_heads([task]) is what makes totals match.
    """
    spec = strategies.get(strategy)
    _check_task(model, task)
    for kind in spec.inserts:
        if not INSERTS[kind][0](model):
            raise StmedfmError(f"Strategy '{strategy}' needs {_INSERT_NAMES.get(kind, kind)}: call "
                               f"stmedfm.model.peft.prepare(model, '{strategy}', task).")
        if kind == "peft":
            _check_peft(model, strategy, method)
    if spec.surgery is not None and not spec.surgery.present(model):
        raise StmedfmError(f"Strategy '{strategy}' needs its own modules: call "
                           f"stmedfm.model.peft.prepare(model, '{strategy}', task).")
    for p in model.parameters():
        p.requires_grad_(False)
    for group in spec.trains:
        for p in (spec.surgery.parameters(model) if group == "own" else GROUPS[group](model, task)):
            p.requires_grad_(True)


def prepare(
    model: STMedFM,
    strategy: str,
    task: str,
    lora_r: int = 4,
    lora_alpha: float = 4.0,
    adapter_bottleneck: int = 16,
    method: strategies.PeftMethod | None = None,
    options: dict | None = None,
) -> STMedFM:
    """Make ``model`` ready to train ``task`` with ``strategy``: add its head if missing, insert the modules the
    strategy declares (unless already there), then :func:`set_trainable`. Returns ``model``. ``options``: the
    strategy's own options as a study resolves them (:func:`stmedfm.core.options.resolve`: LoRA's ``r``/``alpha``, the
    adapter's ``bottleneck``, a method's own), which take precedence over ``lora_r``, ``lora_alpha`` and
    ``adapter_bottleneck`` (the shared fields, kept for callers that have no study). ``method``: the strategy's peft
    method with a study's own option values (:func:`stmedfm.core.options.peft_method`); None = as registered.
    """
    spec = strategies.get(strategy)
    if task not in model.heads:
        model.add_head(task)
    method = method or (spec.peft.with_values(options) if spec.peft is not None and options else spec.peft)
    own = {o.name: o.default for o in strategies.options_of(spec) if o.field is None}
    own.update(options or {})
    pieces = {"lora_r": own.get("r", lora_r), "lora_alpha": own.get("alpha", lora_alpha),
              "adapter_bottleneck": own.get("bottleneck", adapter_bottleneck), "peft": method}
    for kind in spec.inserts:
        present, insert = INSERTS[kind]
        if not present(model):
            insert(model, pieces)
    if spec.surgery is not None and not spec.surgery.present(model):
        spec.surgery.insert(model, own)
    set_trainable(model, strategy, task, method)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts, the two columns of Table 4."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_table(
    tasks: Iterable[str] = registry.PAPER_TASKS,
    strategies: Iterable[str] | None = None,
    width: int = 64,
    ln_affine: bool = True,
    strategy_options: dict | None = None,
    **options,
) -> pd.DataFrame:
    """Table 4 recomputed: one fresh single-head model per (task, strategy); columns task, strategy, total,
    trainable. Needs no data or training, since counts depend only on the architecture: pass every option that
    shapes it (``StudyConfig.count_options()``: width, LayerNorm affine, the shared LoRA rank and adapter bottleneck,
    and each strategy's own options, ``strategy_options``: strategy -> :func:`stmedfm.core.options.resolve`), or the
    counts are those of another model than the study trained (``tests/test_tuners.py`` compares every count with
    the model training builds). ``strategies``: default the paper's (:data:`stmedfm.core.strategies.PAPER`).
    """
    rows = []
    strategies = strategies_.PAPER if strategies is None else strategies
    for task in tasks:
        for strategy in strategies:
            model = prepare(STMedFM([task], width=width, ln_affine=ln_affine), strategy, task,
                            options=(strategy_options or {}).get(strategy), **options)
            total, trainable = count_parameters(model)
            rows.append({"task": task, "strategy": strategy, "total": total, "trainable": trainable})
    return pd.DataFrame(rows, columns=["task", "strategy", "total", "trainable"])
