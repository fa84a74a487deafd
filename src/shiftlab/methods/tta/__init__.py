"""Test-time adaptation, one method per file, each a
:class:`~shiftlab.methods.base.TestTimeMethod` (``forward_and_adapt(x) -> logits``,
``reset()``).

``source`` (no adaptation), ``norm`` (BN-adapt, Schneider et al. 2020), ``tent`` (Wang et
al. 2021), ``memo`` (Zhang, Levine & Finn 2022), ``eata`` (Niu et al. 2022), ``sar`` (Niu
et al. 2023), ``cotta`` (Wang et al. 2022), ``shot`` (SHOT-IM, Liang et al. 2020) and ``tpt`` (Shu et al. 2022; CLIP prompt
tuning, on a :class:`~shiftlab.backbones.clip.ClipClassifier`, ``backbone_kind = "clip"``). Shared pieces (test-batch BatchNorm
statistics, the source snapshot behind ``reset``) are in
:mod:`shiftlab.methods.tta.common`; the online / episodic / single-sample protocols and
corruption streams in :mod:`shiftlab.methods.tta.protocols`.
"""

from shiftlab.methods.tta import cotta, eata, memo, norm, sar, shot, source, tent, tpt  # noqa: F401
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod
from shiftlab.methods.tta.protocols import (
    ProtocolResult,
    StreamSegment,
    corruption_stream,
    run_protocol,
)

__all__ = [
    "BatchNormAdapter",
    "ProtocolResult",
    "StreamSegment",
    "TtaMethod",
    "corruption_stream",
    "run_protocol",
]
