"""Each strategy's own hyperparameters, in one place: which options it takes, their defaults, a study's overrides.

A parameter file sets them per strategy (issue 28)::

    strategy_options: {vera: {lr: 2e-2}, lora: {r: 8, alpha: 8}, adapter: {bottleneck: 32}}

The options of a strategy are declared by its method object (:mod:`stmedfm.core.tuners`, ``Strategy.options``; a
strategy that inserts a built-in piece without declaring any gets the piece's), plus ``lr`` for every strategy (its
default: the config field its entry names, ``Strategy.lr_field``). This module reads, resolves and validates them.

Decision (issue 32): the shared fields (``lr_peft``, ``lora_r``, ``lora_alpha``, ``adapter_bottleneck``) stay the
study-wide defaults of every option that names them (``Option.field``), so every parameter file keeps working; the
method objects hold the registered defaults (the paper's values). A run's identity
(:func:`stmedfm.run.planning.run_id`) holds only its *own* strategy's options that differ from the *registered*
defaults (:func:`overrides`; ``lr`` is in the run's spec already), so tuning LoRA's rank, through
``strategy_options`` or ``lora_r``, renames LoRA's runs (and those of every method that takes ``lora_r``) and never
Scratch's; every id of a study at the paper's values is what it was before.

Torch-free (the foundation layer), so validating parameters stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stmedfm.core import registry, strategies
from stmedfm.core.errors import StmedfmError

__all__ = ["declared", "default", "resolve", "overrides", "check", "peft_method", "default_grid",
           "check_lr_grid", "owners", "check_study", "CLAIM_ROLES"]


def _options(strategy: str) -> dict[str, strategies.Option]:
    return {o.name: o for o in strategies.options_of(strategy)}


def declared(strategy: str) -> dict[str, type]:
    """Option name -> type (int or float) of ``strategy``, from its method object (unknown name: StmedfmError)."""
    return {"lr": float, **{name: o.kind for name, o in _options(strategy).items()}}


def default(cfg, strategy: str, name: str):
    """The value ``strategy`` gets for option ``name`` when the study does not set it: the shared config field, or
    the value its method object registers."""
    if name == "lr":
        return getattr(cfg, strategies.get(strategy).lr_field)
    return _options(strategy)[name].value(cfg)


def resolve(cfg, strategy: str) -> dict[str, Any]:
    """Every option of ``strategy`` as the study trains it: the defaults, overridden by ``cfg.strategy_options``."""
    given = (getattr(cfg, "strategy_options", None) or {}).get(strategy, {})
    return {name: given.get(name, default(cfg, strategy, name)) for name in declared(strategy)}


def overrides(cfg, strategy: str) -> dict[str, Any]:
    """The options of ``strategy`` that the study trains at another value than the registered default, ``lr``
    excepted (a run's spec holds its learning rate): what a run's identity adds. Empty for every study at the
    paper's values."""
    values = resolve(cfg, strategy)
    return {name: values[name] for name, o in sorted(_options(strategy).items()) if values[name] != o.default}


def peft_method(cfg, strategy: str) -> strategies.PeftMethod | None:
    """The strategy's peft method with the study's values of its own options (VeRA's ``r``...), None if none."""
    method = strategies.get(strategy).peft
    if method is None:
        return None
    return method.with_values(resolve(cfg, strategy))


def owners(name: str) -> list[str]:
    """The registered strategies that take option ``name``."""
    return [s for s in strategies.names() if name in declared(s)]


def _number(kind: type, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (isinstance(value, int) if kind is int else math.isfinite(value))


def _unknown_strategy(strategy, where: str) -> str | None:
    """The one-line error for a strategy name that is not registered, given in parameter ``where``; None if known."""
    known = strategies.names()
    if strategy in known:
        return None
    return (f"Unknown strategy '{strategy}' in '{where}'.{registry.closest(str(strategy), known)} "
            f"Strategies: {', '.join(known)}.")


def check(options: Mapping[str, Mapping[str, Any]], defaults=None) -> list[str]:
    """Problems of a ``strategy_options`` mapping, one line each: an unknown strategy, an option the strategy does
    not take (saying which strategies do), a value of the wrong type or not positive (an option that may be 0,
    OFT's ``r``, says so: ``Option.zero_ok``). ``defaults``: unused, kept for callers."""
    errors = []
    for strategy, given in options.items():
        if (unknown := _unknown_strategy(strategy, "strategy_options")) is not None:
            errors.append(unknown)
            continue
        if not isinstance(given, Mapping):
            errors.append(f"'strategy_options.{strategy}' must be a mapping of option: value (e.g. {{lr: 0.02}}), "
                          f"got {given!r}.")
            continue
        own = {"lr": strategies.Option("lr", float), **_options(strategy)}
        for name, value in given.items():
            if name not in own:
                others = owners(name)
                where = (f" '{name}' is an option of {', '.join(others)}." if others else
                         registry.closest(str(name), list(own)))
                errors.append(f"Strategy '{strategy}' has no option '{name}'.{where} Its options: "
                              f"{', '.join(own)}.")
                continue
            problem = own[name].problem(f"strategy_options.{strategy}.{name}", value)
            if problem:
                errors.append(problem)
    return errors


# --- learning-rate grids ----------------------------------------------------------------------------------------
#: The default grid of a strategy that trains a part of a pretrained model (PEFT, linear probe): 5 log-spaced
#: values from 1e-3 to 1e-1, the range where peft's method comparison found each method's best (issue 28).
PEFT_GRID = tuple(float(f"{10 ** (-3 + i / 2):.3g}") for i in range(5))  # 0.001, 0.00316, 0.01, 0.0316, 0.1
#: Scratch and Full (every parameter trains): 3 values around the paper's, a factor 3 apart.
FULL_GRID_FACTORS = (1 / 3, 1.0, 3.0)


def default_grid(cfg, strategy: str) -> list[float]:
    """The grid ``lr_grid: default`` means for ``strategy``: :data:`PEFT_GRID` for a strategy that does not train
    every parameter, else the paper's learning rate x :data:`FULL_GRID_FACTORS` (3 significant digits)."""
    if strategies.get(strategy).trains != ("all",):
        return list(PEFT_GRID)
    lr = default(cfg, strategy, "lr")
    return [float(f"{lr * f:.3g}") for f in FULL_GRID_FACTORS]


def check_lr_grid(grid: Mapping[str, Any]) -> list[str]:
    """Problems of an ``lr_grid`` mapping (strategy -> list of learning rates or 'default'), one line each."""
    errors = []
    for strategy, values in grid.items():
        if (unknown := _unknown_strategy(strategy, "lr_grid")) is not None:
            errors.append(unknown)
        elif values == "default":
            continue
        elif not isinstance(values, (list, tuple)) or len(values) < 2:
            errors.append(f"'lr_grid.{strategy}' must be a list of at least two learning rates or 'default', "
                          f"got {values!r}.")
        else:
            bad = [v for v in values if not _number(float, v) or v <= 0]
            if bad:
                errors.append(f"'lr_grid.{strategy}' holds learning rates, which must be positive numbers; "
                              f"got {', '.join(map(repr, bad))}.")
            elif len(set(values)) != len(values):
                errors.append(f"'lr_grid.{strategy}' names a learning rate twice: {values!r}.")
    return errors



#: The roles of the paper's claims a study may set by name (``claim_roles``): the keys of
#: :func:`stmedfm.analysis.report.claim_roles` (tests/test_fair.py keeps them equal).
CLAIM_ROLES = ("dominant", "small", "small2d", "blood", "fewshot2d", "fewshot3d")


def check_study(cfg) -> list[str]:
    """Problems of a config's issue-28 fields, one line each: ``strategy_options`` (:func:`check`), ``lr_grid``
    (expanded in place: 'default' -> :func:`default_grid` of each strategy), ``lr_selection_seeds`` (needed by a grid,
    disjoint from ``seeds``), ``equivalence_margin`` and ``claim_roles``."""
    errors = check(cfg.strategy_options, cfg)
    if cfg.lr_grid == "default":
        cfg.lr_grid = {s: "default" for s in cfg.strategies}
    grid_errors = check_lr_grid(cfg.lr_grid)
    errors += grid_errors
    if not grid_errors:
        cfg.lr_grid = {s: (default_grid(cfg, s) if v == "default" else [float(x) for x in v])
                       for s, v in cfg.lr_grid.items()}
    for s in cfg.lr_grid:
        if s in strategies.REGISTRY and s not in cfg.strategies:
            errors.append(f"'lr_grid' names '{s}', which is not in 'strategies' ({', '.join(cfg.strategies)}): "
                          f"learning rates are selected for the transfer runs.")
    if any(v < 0 for v in cfg.lr_selection_seeds):
        errors.append(f"Parameter 'lr_selection_seeds' holds non-negative seeds, got {cfg.lr_selection_seeds}.")
    if cfg.lr_grid and not cfg.lr_selection_seeds:
        errors.append("'lr_grid' needs 'lr_selection_seeds' (e.g. [1000, 1001, 1002]): the seeds of the selection "
                      "runs, disjoint from 'seeds', so that no run that is tested took part in the selection.")
    shared = sorted(set(cfg.lr_selection_seeds) & set(cfg.seeds))
    if shared:
        errors.append(f"'lr_selection_seeds' and 'seeds' share {', '.join(map(str, shared))}: selection seeds must "
                      f"be disjoint from the study's seeds (a tested run must not have taken part in the selection).")
    if not 0 < cfg.equivalence_margin < 1:
        errors.append(f"Parameter 'equivalence_margin' is a difference of AUROC in (0, 1), got "
                      f"{cfg.equivalence_margin!r}.")
    for role, flag in cfg.claim_roles.items():
        if role not in CLAIM_ROLES:
            errors.append(f"Unknown claim role '{role}' in 'claim_roles'.{registry.closest(str(role), CLAIM_ROLES)} "
                          f"Roles: {', '.join(CLAIM_ROLES)}.")
        elif flag not in cfg.downstream_tasks:
            errors.append(f"'claim_roles.{role}' is '{flag}', which is not a downstream task "
                          f"(downstream_tasks: {', '.join(cfg.downstream_tasks)}).")
    return errors
