"""ObservationEncoder: state (+ task, + optional image) -> one condition vector [B, C] for a decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from driftkit.policy.config import PolicyConfig


class TinyCNN(nn.Module):
    """Four stride-2 convolutions and global average pooling: [B, 3, H, H] in [0, 1] -> [B, out_dim]."""

    def __init__(self, out_dim: int, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        h = self.convs(image * 2.0 - 1.0)  # centre pixels so the first layer sees zero-mean inputs
        return self.proj(h.mean(dim=(2, 3)))


class ObservationEncoder(nn.Module):
    """Concatenates a state MLP's features, a learned task embedding and (optionally) image features,
    then projects to the decoder's condition width."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        h = config.hidden_dim
        self.state_mlp = nn.Sequential(nn.Linear(config.state_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.task_embedding = nn.Embedding(config.num_tasks, config.task_embed_dim)
        self.image_net = TinyCNN(h) if config.image_size else None
        fused = h + config.task_embed_dim + (h if self.image_net is not None else 0)
        self.fuse = nn.Sequential(nn.Linear(fused, h), nn.SiLU(), nn.Linear(h, config.cond_dim))

    def forward(self, state: Tensor, task: Tensor, image: Tensor | None = None) -> Tensor:
        """state [B, S] (normalised), task [B] long, image [B, 3, H, H] or None -> [B, C]."""
        parts = [self.state_mlp(state), self.task_embedding(task)]
        if self.image_net is not None:
            parts.append(self.image_net(image))
        return self.fuse(torch.cat(parts, dim=-1))
