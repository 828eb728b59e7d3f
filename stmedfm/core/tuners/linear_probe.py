"""The linear probe: the frozen pretrained encoder, the task's head trained."""

from stmedfm.core.tuners.base import Strategy

LINEAR_PROBE = Strategy("linear_probe", "Pretrain+Linear probe", trains=("head",), lr_field="lr_linear_probe",
                        options=(), description="the frozen pretrained encoder, the head trained", family="selective")
