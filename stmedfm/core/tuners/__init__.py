"""One module per adaptation method, in the spirit of Hugging Face peft's ``tuners/<method>/``.

Each module defines its method object(s) (:class:`~stmedfm.core.tuners.base.Strategy`): options with defaults and
validation, what it inserts, what it trains; :mod:`stmedfm.core.strategies` registers them, in :data:`BUILT_IN`'s order
(the order of tables and figures). Adding a method of the package is one module here + one entry of
:data:`BUILT_IN`; a method of one's own is one module anywhere + one ``stmedfm.core.strategies.register`` call
(``docs/strategies.md``). The Hugging Face peft wrappers share :mod:`~stmedfm.core.tuners.hf`, driven by a table.

Torch-free, like the registry: the model surgery of the built-in pieces is :mod:`stmedfm.model.peft`'s.
"""

from stmedfm.core.tuners import adapter, bitfit, hf, linear_probe, lora, scratch
from stmedfm.core.tuners.base import Option, PeftMethod, Strategy

__all__ = ["Option", "PeftMethod", "Strategy", "BUILT_IN", "options_of"]

#: The package's methods, in the order of tables and figures.
BUILT_IN = (scratch.SCRATCH, scratch.FULL, lora.LORA, adapter.ADAPTER, linear_probe.LINEAR_PROBE, bitfit.BITFIT,
            *hf.METHODS)

#: The options a built-in piece brings to a strategy that inserts it without declaring its own.
_PIECE_OPTIONS = {"lora": lora.OPTIONS, "adapter": adapter.OPTIONS}


def options_of(strategy: Strategy) -> tuple[Option, ...]:
    """The options of ``strategy`` besides ``lr``: those it declares, else those of the pieces it inserts."""
    if strategy.options is not None:
        return strategy.options
    out = [o for kind in strategy.inserts for o in _PIECE_OPTIONS.get(kind, ())]
    return tuple(out) + (hf.options(strategy.peft) if strategy.peft is not None else ())
