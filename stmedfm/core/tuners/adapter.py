"""Bottleneck adapters (Houlsby et al., 2019): one residual ``x + up(GELU(down(x)))`` after each encoder block.

Option: ``bottleneck`` (default the study's shared field ``adapter_bottleneck``, the paper's 16). The module is
:class:`stmedfm.model.peft.Adapter` (insert ``'adapter'``); its trainable group ``'adapter'`` is every adapter parameter.
"""

from stmedfm.core.tuners.base import Option, Strategy

#: The adapter's options; a strategy inserting ``'adapter'`` without declaring options gets these.
OPTIONS = (Option("bottleneck", int, 16, field="adapter_bottleneck"),)

ADAPTER = Strategy("adapter", "Pretrain+Adapter", inserts=("adapter",), trains=("adapter", "layernorm", "head"),
                   options=OPTIONS, description="a bottleneck adapter after each encoder block + LayerNorms + head",
                   family="added module")
