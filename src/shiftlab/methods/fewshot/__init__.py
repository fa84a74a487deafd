"""Few-shot and one-shot methods, one file each, behind the ``FewShotClassifier`` contract.

Metric methods: ``protonet`` (Snell et al. 2017), ``matching`` (Vinyals et al. 2016),
``siamese`` (Koch et al. 2015), ``triplet`` (Schroff et al. 2015). Optimisation-based:
``maml`` (Finn et al. 2017), ``reptile`` (Nichol et al. 2018). Fine-tuning baseline:
``baseline_pp`` (Chen et al. 2019). See :mod:`shiftlab.methods.fewshot.common` for the
shared base class and :mod:`shiftlab.experiment.fewshot_run` for the episodic runner;
:class:`~shiftlab.methods.fewshot.ensemble.FewShotEnsemble` combines trained metric models.
"""

from shiftlab.methods.fewshot import (  # noqa: F401  (registration on import)
    baseline_pp,
    maml,
    matching,
    protonet,
    reptile,
    siamese,
    triplet,
)
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.methods.fewshot.ensemble import FewShotEnsemble

__all__ = ["FewShotEnsemble", "FewShotMethod"]
