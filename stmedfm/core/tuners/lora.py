"""LoRA (Hu et al., 2022) on the 4 encoder Linears (``fc1``/``fc2`` of both blocks) + LayerNorms + head.

Options: ``r`` (rank) and ``alpha`` (scaling alpha / r), defaults the study's shared fields ``lora_r`` and
``lora_alpha`` (the paper's r=4, our alpha=4: scaling 1). The layer is :class:`stmedfm.model.peft.LoRALinear` (insert
``'lora'``); its trainable group ``'lora'`` is every A and B.
"""

from stmedfm.core.tuners.base import Option, Strategy

#: LoRA's options; a strategy inserting ``'lora'`` without declaring options gets these.
OPTIONS = (Option("r", int, 4, field="lora_r"), Option("alpha", float, 4.0, field="lora_alpha"))

LORA = Strategy("lora", "Pretrain+LoRA", inserts=("lora",), trains=("lora", "layernorm", "head"), options=OPTIONS,
                description="LoRA (rank lora_r) on the 4 encoder Linears + LayerNorms + head", family="weight update")
