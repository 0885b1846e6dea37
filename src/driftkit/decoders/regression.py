"""Regression: an MLP head from the condition to the chunk, trained with L1 or L2."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice
from driftkit.ops import masked_mean


@dataclass
class RegressionConfig(DecoderConfig):
    loss_type: str = "l1"
    """l1 (median-seeking, robust) or l2 (mean-seeking)."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("loss_type", self.loss_type, ("l1", "l2"))


@register_decoder
class RegressionDecoder(Decoder):
    name = "regression"
    summary = "MLP head on the condition, L1/L2 loss; deterministic, 1 NFE"
    config_class = RegressionConfig

    def __init__(self, config: RegressionConfig):
        super().__init__(config)
        self.net = self._net(in_dim=0, out_dim=config.dim, use_time=False)

    def predict(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """cond [B, C] or [B, L, C] (cond_mask [B, L] or None) -> [B, T, D] normalised prediction."""
        return self.net(cond, cond_mask=cond_mask)

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        err = self.predict(cond, cond_mask) - x_1
        loss = masked_mean(err.abs() if self.config.loss_type == "l1" else err.square(), mask)
        return DecoderLoss(loss, {"loss": loss.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: None, cond_mask=None) -> Tensor:
        return self.predict(cond, cond_mask).unsqueeze(1).expand(-1, k, -1, -1).clone()

    def nfe(self, steps: int | None = None) -> int:
        return 1
