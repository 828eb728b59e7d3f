"""Scratch and Pretrain+Full: no adaptation method, every parameter trained (the paper's two baselines)."""

from stmedfm.core.tuners.base import Strategy

SCRATCH = Strategy("scratch", "Scratch", trains=("all",), lr_field="lr_scratch", pretrained=False, options=(),
                   description="a fresh model, every parameter trained", family="baseline")
FULL = Strategy("full", "Pretrain+Full", trains=("all",), lr_field="lr_full", options=(),
                description="the pretrained model, every parameter trained", family="baseline")
