"""Transfer learning under covariate shift: fine-tuning (:mod:`.finetune`) and data selection
(:mod:`.selection`: which part of the labelled target set to fine-tune on)."""

from shiftlab.methods.transfer import finetune  # noqa: F401
from shiftlab.methods.transfer.finetune import FineTune, FineTuneHparams, backbone_blocks

__all__ = ["FineTune", "FineTuneHparams", "backbone_blocks"]
