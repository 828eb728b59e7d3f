"""BitFit (Ben Zaken et al., 2022): every bias of the pretrained model trains.

Decision: following the paper's PEFT convention the LayerNorms and the head train too, and its learning rate is the
PEFT one (``lr_peft``), as for LoRA and adapters. Made of existing pieces (groups ``bias``, ``layernorm``,
``head``), so it inserts nothing.
"""

from stmedfm.core.tuners.base import Strategy

BITFIT = Strategy("bitfit", "Pretrain+BitFit", trains=("bias", "layernorm", "head"), options=(),
                  description="every bias of the pretrained model + LayerNorms + head", family="selective")
