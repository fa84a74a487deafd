"""An ensemble of trained metric few-shot models: the mean of their log-probabilities.

Not a registered method (it trains nothing): it combines finished runs for evaluation, as
deep ensembles do for ordinary classifiers. Each member keeps its own embedding and distance
(ProtoNet with any distance, Matching, triplet, Siamese, Baseline++ may be mixed); an episode's
log-probabilities are the mean of the members' ``log_softmax`` over the same support.

The ensemble behaves like a metric :class:`~shiftlab.methods.fewshot.common.FewShotMethod`
for the evaluators of :mod:`shiftlab.experiment.fewshot_run`: its embedding is the
concatenation of the members' embeddings, so cached-embedding evaluation and
:meth:`test_time_shift` work unchanged.

Reference:
    Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from shiftlab.methods.fewshot.common import EmbeddingEvaluation, FewShotMethod

__all__ = ["FewShotEnsemble"]


class FewShotEnsemble(EmbeddingEvaluation, nn.Module):
    """Mean log-probability of ``members`` (trained metric few-shot methods, ``embeds_independently``).

    Shapes: ``embed_eval(x: [B, C, H, W]) -> [B, sum of the members' D]``;
    ``logits_from_embeddings(...) -> [Q, N]`` mean log-probabilities (a valid logit: argmax and
    softmax are those of the combined prediction); ``fit_support`` / ``predict`` / ``similarity``
    come from :class:`~shiftlab.methods.fewshot.common.EmbeddingEvaluation`.
    """

    embeds_independently = True

    def __init__(self, members: Sequence[FewShotMethod]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        bad = [type(m).__name__ for m in members if not m.embeds_independently]
        if bad:
            raise ValueError(f"ensembles combine metric methods only; {', '.join(bad)} adapt to every episode")
        self.members = nn.ModuleList(members)
        self._dims: list[int] | None = None

    @torch.no_grad()
    def embed_eval(self, x: Tensor, chunk: int = 1024) -> Tensor:
        """The members' eval-mode embeddings of ``x``, concatenated: ``[B, sum D_i]``."""
        parts = [m.embed_eval(x, chunk) for m in self.members]
        self._dims = [p.shape[1] for p in parts]
        return torch.cat(parts, dim=1)

    def _split(self, e: Tensor) -> tuple[Tensor, ...]:
        if self._dims is None or sum(self._dims) != e.shape[1]:
            raise ValueError("embeddings must come from this ensemble's embed_eval")
        return torch.split(e, self._dims, dim=1)

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Mean over members of ``log_softmax(member logits)``: ``[Q, N]``."""
        outs = [m.logits_from_embeddings(s, support_y, q, n_way).log_softmax(1)
                for m, s, q in zip(self.members, self._split(support), self._split(query), strict=True)]
        return torch.stack(outs).mean(0)

    def similarity_from_embeddings(self, e1: Tensor, e2: Tensor) -> Tensor:
        """Mean of the members' pair similarities ``[B]``."""
        parts = [m.similarity_from_embeddings(a, b)
                 for m, a, b in zip(self.members, self._split(e1), self._split(e2), strict=True)]
        return torch.stack(parts).mean(0)

    @contextmanager
    def test_time_shift(self, px: int) -> Iterator[None]:
        """Every member's :meth:`~shiftlab.methods.fewshot.common.FewShotMethod.test_time_shift`."""
        with ExitStack() as stack:
            for m in self.members:
                stack.enter_context(m.test_time_shift(px))
            yield
