"""Methods of Hugging Face peft (issue 22), one table: each row is a method object whose :class:`PeftMethod` is
data; the generic ``'peft'`` insert of :mod:`stmedfm.model.peft` builds the config and injects it into the model in place.

Decisions, shared by all of them:

* what they wrap: the paper's LoRA wraps the 4 encoder Linears (fc1 64->128, fc2 128->64 of both blocks); so does
  every method here except LN-tuning, whose object is the LayerNorms;
* what trains (the paper's PEFT convention): the method's parameters ('peft') + every LayerNorm + the head; for
  LN-tuning the method's parameters *are* the LayerNorms (peft trains a copy of each and freezes the original,
  which no longer enters the forward pass), so it trains the copies + the head;
* rank and scaling: the study's lora_r / lora_alpha (the paper's r=4, scaling 1), except VeRA (below);
* initialisation: each is an identity at insertion (tests/test_peft_methods.py), so "Pretrain+X" starts from the
  pretrained function; the learning rate is the PEFT one (lr_peft), as for LoRA and adapters.

Options (:func:`options`): ``r``/``alpha`` when the config class has a rank / a scaling (:data:`PEFT_RANKED`, kept
equal to peft's own fields by ``tests/test_options.py``; defaults the shared ``lora_r``/``lora_alpha``), and every
numeric option of the :class:`PeftMethod` (VeRA's ``r``, OFT's ``oft_block_size``, FourierFT's ``n_frequency``),
its registered value being the default.
"""

from stmedfm.core.tuners.base import Option, PeftMethod, Strategy

__all__ = ["PEFT_RANKED", "options", "METHODS"]

#: peft config classes with a rank field ``r`` and a scaling field (``lora_alpha`` or ``alpha``): those get the
#: study's ``lora_r`` / ``lora_alpha`` unless the method sets them (:func:`stmedfm.model.peft.peft_config`).
PEFT_RANKED = {"LoraConfig": ("r", "alpha"), "VeraConfig": ("r",), "LoHaConfig": ("r", "alpha"),
               "LoKrConfig": ("r", "alpha"), "OFTConfig": ("r",), "HRAConfig": ("r",)}
_SHARED = {"r": Option("r", int, 4, field="lora_r"), "alpha": Option("alpha", float, 4.0, field="lora_alpha")}


def options(method: PeftMethod) -> tuple[Option, ...]:
    """The options of a peft method: its rank and scaling (shared fields), then its own numeric options, whose
    registered value is the default (and overrides the shared field: VeRA's ``r=64``)."""
    own = {k: v for k, v in method.options if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {k: _SHARED[k] for k in PEFT_RANKED.get(method.config, ())}
    out.update({k: Option(k, int if k == "r" else type(v), v, zero_ok=v == 0) for k, v in own.items()})
    return tuple(out.values())


_TRAINS = ("peft", "layernorm", "head")
_LINEARS = "on the 4 encoder Linears + LayerNorms + head"
#: name, label, family, method, description; VeRA, IA3, OFT and FourierFT's settings are explained below the table.
_TABLE = (
    ("dora", "Pretrain+DoRA", "weight update", PeftMethod.of("LoraConfig", use_dora=True),
     f"DoRA (LoRA r=lora_r + a magnitude per output feature) {_LINEARS}"),
    ("vera", "Pretrain+VeRA", "weight update", PeftMethod.of("VeraConfig", r=64),
     f"VeRA (shared frozen random projections, rank 64; vectors d and b trained) {_LINEARS}"),
    ("ia3", "Pretrain+IA3", "added module", PeftMethod.of("IA3Config", feedforward_modules=["fc2"]),
     "IA3 scaling vectors (fc1's output, fc2's input: feed-forward) in both blocks + LayerNorms + head"),
    ("loha", "Pretrain+LoHa", "weight update", PeftMethod.of("LoHaConfig"),
     f"LoHa (Hadamard product of two rank-lora_r factorisations) {_LINEARS}"),
    ("lokr", "Pretrain+LoKr", "weight update", PeftMethod.of("LoKrConfig"),
     f"LoKr (Kronecker product, second factor of rank lora_r) {_LINEARS}"),
    ("oft", "Pretrain+OFT", "rotation", PeftMethod.of("OFTConfig", r=0, oft_block_size=16),
     f"OFT (orthogonal rotation of the input, blocks of 16) {_LINEARS}"),
    ("hra", "Pretrain+HRA", "rotation", PeftMethod.of("HRAConfig"),
     f"HRA (lora_r Householder reflections of the input) {_LINEARS}"),
    ("fourierft", "Pretrain+FourierFT", "weight update",
     PeftMethod.of("FourierFTConfig", n_frequency=768, init_weights=True),
     f"FourierFT (768 spectral coefficients per Linear) {_LINEARS}"),
    ("ln_tuning", "Pretrain+LN-tuning", "selective", PeftMethod.of("LNTuningConfig", targets="layernorms"),
     "LN-tuning: a trained copy of every LayerNorm + head (originals frozen)"),
)
# VeRA: one pair of frozen random projections A (r x 128) and B (128 x r) shared by the 4 Linears (each uses the
# slice of its own shape), drawn from a fixed key; per Linear it trains a scaling vector d (r) and b (out features).
# Rank 64 = the encoder width: since only vectors train, VeRA needs a high rank (its paper uses 256-1024 on
# 768-4096-wide models); at 64 the random projections span all of fc1's input and fc2's output space.
# IA3's feed-forward convention (Liu et al., 2022, l_ff): the activation between the two layers of the MLP is
# rescaled, i.e. fc2 is the 'feed-forward module' whose *input* (128, after GELU) is scaled; fc1 scales its
# *output* (128, before GELU), as IA3 does for its other targets. Vectors start at 1.
# OFT: a block-diagonal orthogonal rotation of each Linear's input space (Cayley parametrisation of skew-symmetric
# blocks, peft's default Neumann approximation). Block size 16 (r=0: peft derives the number of blocks, 4 for fc1's
# 64 inputs, 8 for fc2's 128) puts it at LoRA's budget (2,880 vs 3,072 parameters); peft's default 32 would double it.
# HRA: r = lora_r Householder reflections of each Linear's input space (the chain of reflections between LoRA and
# OFT); its identity at insertion needs an even r (peft pairs equal vectors), which the paper's r=4 is.
# FourierFT: per Linear, n trained coefficients at fixed random frequencies of the weight's 2D spectrum (seed 777,
# peft's default), dW = scaling * Re(IFFT2). n = 768 per Linear matches LoRA's budget (3,072). Decision:
# init_weights=True (coefficients 0), because peft's default (False: coefficients ~ N(0, 1), scaling 150) would
# change the pretrained function at insertion.

#: The method objects, in the registry's order.
METHODS = tuple(Strategy(name, label, inserts=("peft",),
                         trains=("peft", "head") if method.targets == "layernorms" else _TRAINS,
                         peft=method, options=options(method), description=description, family=family)
                for name, label, family, method, description in _TABLE)
