"""Self-supervised pre-training for transfer, one method per file, each updated on
:class:`~shiftlab.batches.Views` batches (two augmented views of the same images).

``byol`` (Grill et al. 2020), ``simsiam`` (Chen & He 2021) and ``simclr`` (Chen et al.
2020). Shared pieces (the base class, MLP heads, the EMA and BYOL's momentum schedule) are
in :mod:`shiftlab.methods.ssl.common`; the k-NN and linear-probe monitors in
:mod:`shiftlab.methods.ssl.monitor`; the five transfer settings (``kind: ssl`` recipes) in
:mod:`shiftlab.experiment.ssl_run`.
"""

from shiftlab.methods.ssl import byol, simclr, simsiam  # noqa: F401  (registration on import)
from shiftlab.methods.ssl.common import SslMethod, cosine_momentum, ema_update_, mlp_head

__all__ = ["SslMethod", "cosine_momentum", "ema_update_", "mlp_head"]
