"""Unsupervised domain adaptation, one method per file, each updated on
:class:`~shiftlab.batches.DomainPair` batches (labelled source + unlabelled target).

``source_only`` (no adaptation), ``dann`` (Ganin et al. 2016), ``cdan`` (CDAN+E, Long et
al. 2018), ``mcc`` (Jin et al. 2020), ``mi_align`` (DANN + JSD mutual-information
alignment of pseudo-labelled target, Sharma et al. 2022) and ``adamatch`` (Berthelot et
al. 2022). Shared pieces (gradient reversal, discriminators, schedules) are in
:mod:`shiftlab.methods.uda.common`.
"""

from shiftlab.methods.uda import adamatch, cdan, dann, mcc, mi_align, source_only  # noqa: F401
from shiftlab.methods.uda.common import GradientReversal, UdaMethod, grad_reverse, grl_coefficient

__all__ = ["GradientReversal", "UdaMethod", "grad_reverse", "grl_coefficient"]
