"""DFMPolicy: discrete flow matching inside the VLM's own token interface (DFM-VLA).

    cfg = DFMPolicyConfig(backbone="qwen2_5_vl-tiny", horizon=8, action_dim=4, state_dim=0, cameras=(cam,),
                          decoder_options={"num_bins": 64, "steps": 14, "validation_steps": 2})
    policy = DFMPolicy(cfg); policy.set_stats(stats)
    out = policy(batch)                                  # cross-entropy on x_1 from x_t on the path
    y = policy.sample(obs, num_samples=K)                # prefix encoded once, CTMC refinement of the block
    r = policy.refine(obs, cache="adaptive", refresh_every=4)   # .actions, .tokens, .stats (work done)

The action chunk is a block of T * D action-bin tokens (the LM-head rows of the lm_tokens decoder) after the
image + text prefix, preceded by one slot that carries the flow time and the state (the backbone's query-token
embedding + a time MLP + a zero-initialised projection of the normalised state). The block attends to the prefix
and bidirectionally within itself (driftkit.backbones.action_block); the LM head's logits over the bin rows at
every block position are the posterior p_{1|t}. Training draws t ~ U(0, t_max) and x_t on the path and puts
cross-entropy on x_1 (as the discrete_flow decoder does with its own network); sampling runs
driftkit.flow.discrete.ctmc_euler with the LM as the posterior. Metric path: uniform random bins at t = 0; mask
path: a learned [MASK] embedding (initialised to the mean bin embedding).

`decoder` is "discrete_flow": decoder_options are the discrete flow's own options (num_bins, path, steps,
validation_steps, metric_c, metric_alpha, kappa_power, t_max), validated by its config; there is no separate
decoder network. Targets are quantile-normalised to [-1, 1] and binned (driftkit.tokenizers.UniformBins).
Families tested: qwen2_vl, qwen2_5_vl, qwen3_vl, smolvlm, paligemma (tiny presets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.decoders.base import DecoderLoss
from driftkit.errors import check_choice, check_positive
from driftkit.normalize import Normalizer, NormStats
from driftkit.ops import masked_mean
from driftkit.policy.base import Policy, action_target, register_policy
from driftkit.policy.keys import ACTION_KEY, STATE_KEY
from driftkit.policy.vlm import VLMPolicy, VLMPolicyConfig, build_backbone, saved_backbone
from driftkit.rtc import Inpaint
from driftkit.timing import StageTimer, stage_of

FLOW_OPTIONS = ("num_bins", "path", "steps", "validation_steps", "metric_c", "metric_alpha", "kappa_power", "t_max")
TIME_FEATURES = 64  # sinusoidal features of t fed to the time MLP


@dataclass
class DFMPolicyConfig(VLMPolicyConfig):
    """A VLM whose LM head refines a block of action-bin tokens by discrete flow matching."""

    kind = "dfm"

    decoder: str = "discrete_flow"
    """Always discrete_flow: decoder_options hold its path and sampler options (no separate network)."""
    num_query_tokens: int = 1
    """Always 1: the query token's embedding is the base of the slot carrying t and the state."""
    bin_layout: str = "openvla"
    """Which LM-head rows are the bins (as lm_tokens): openvla (V - 1 - i, V = the tokenizer's vocab_size, below
    any added special token) or centres (base_vocab - N + i)."""
    block_cache: str = "prefix"
    """How refinement passes reuse keys/values: none (one uncached pass over prefix + block per step, the
    reference), prefix (the prefix cached once, the whole block each step; exact) or adaptive (only the changed
    block tokens recomputed, everything every refresh_every calls; approximate, see action_block)."""
    refresh_every: int = 4
    """Adaptive cache: calls between full-block passes (1 = every call, exact)."""

    def __post_init__(self):
        check_choice("decoder", self.decoder, ("discrete_flow",))
        super().__post_init__()
        unknown = sorted(set(self.decoder_options) - set(FLOW_OPTIONS))
        if unknown:
            raise ValueError(f"decoder_options {unknown} do not apply to a dfm policy (the VLM is the network); "
                             f"its options: {list(FLOW_OPTIONS)}")
        if self.num_query_tokens != 1:
            raise ValueError(f"got num_query_tokens={self.num_query_tokens}; a dfm policy uses exactly 1 (the slot "
                             "that carries t and the state)")
        if self.backbone_options.get("layer", -1) != -1:
            raise ValueError(f"got backbone_options layer={self.backbone_options['layer']}; the LM head reads the "
                             "final hidden state, so a dfm policy needs layer=-1")
        check_choice("bin_layout", self.bin_layout, ("openvla", "centres"))
        check_choice("block_cache", self.block_cache, ("none", "prefix", "adaptive"))
        check_positive("refresh_every", self.refresh_every)

    def default_decoder_options(self) -> dict:
        return {}

    def flow_config(self):
        """The discrete flow's validated options (DiscreteFlowConfig)."""
        from driftkit.decoders.registry import decoder_config

        return decoder_config(self.decoder, 1, self.target_shape, **self.decoder_options)


@dataclass
class Refinement:
    """One refinement of B rows x K samples."""

    actions: Tensor  # [B, K, T, D] in action units
    tokens: Tensor  # [B * K, T, D] bin ids
    stats: object  # action_block.RefinementStats: calls, passes, slots run (and the posteriors if recorded)


@register_policy
class DFMPolicy(Policy):
    config_class = DFMPolicyConfig
    # The observation side is the VLM policy's (cameras, instruction, state; assets on disk).
    inputs = VLMPolicy.inputs
    save_assets = VLMPolicy.save_assets
    _enable_checkpointing = VLMPolicy._enable_checkpointing

    def __init__(self, config: DFMPolicyConfig, backbone=None):
        from driftkit.backbones.action_block import bin_vocab_ids
        from driftkit.flow.discrete import MetricPath, MixturePath
        from driftkit.tokenizers import UniformBins

        super().__init__(config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        flow = self.flow = config.flow_config()
        h, n = self.backbone.hidden_size, flow.num_bins
        self.bins = UniformBins(n)
        self.path = (MixturePath(n, flow.kappa_power) if flow.path == "mask"
                     else MetricPath(n, flow.metric_c, flow.metric_alpha))
        self.register_buffer("bin_ids", bin_vocab_ids(self.backbone, n, config.bin_layout), persistent=False)
        table = self.backbone.model.get_input_embeddings().weight.detach()
        self.mask_embed = nn.Parameter(table[self.bin_ids].float().mean(0))  # [H]; used by the mask path only
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FEATURES, h), nn.SiLU(), nn.Linear(h, h))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)
        self.state_proj = None
        if config.state_dim:
            self.state_proj = nn.Linear(config.state_dim, h)
            nn.init.zeros_(self.state_proj.weight)
            nn.init.zeros_(self.state_proj.bias)
        self.state_normalizer = Normalizer(max(config.state_dim, 1), "mean_std" if config.normalize_state else "none")
        self.normalizer = Normalizer(config.action_dim, "quantile")
        if config.gradient_checkpointing:
            self._enable_checkpointing()

    @classmethod
    def from_assets(cls, config: DFMPolicyConfig, path) -> "DFMPolicy":
        return cls(config, saved_backbone(path))

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        self.normalizer.set_stats(stats[ACTION_KEY])
        if self.config.state_dim and self.config.normalize_state:
            self.state_normalizer.set_stats(stats[STATE_KEY])

    # ---- the block's inputs and outputs ------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """S = 1 + T * D: the t slot and one slot per action value (time-major)."""
        return 1 + self.config.horizon * self.config.action_dim

    def state_shift(self, state: Tensor | None) -> Tensor | None:
        """state [B, S_state] -> [B, H] added to the t slot (None without a state)."""
        return None if state is None else self.state_proj(self.state_normalizer.normalize(state))

    def block_embeddings(self, x: Tensor, t: Tensor, shift: Tensor | None = None) -> Tensor:
        """x [N, P] bin ids (num_bins = [MASK]), t [N], shift [N, H] or None -> [N, S, H] block input
        embeddings: the t slot, then the tokens' embeddings from the LM's own table."""
        from driftkit.nets.mlp import sinusoidal_embedding

        table = self.backbone.model.get_input_embeddings()
        n = self.flow.num_bins
        tokens = table(self.bin_ids[x.clamp_max(n - 1)])
        tokens = torch.where((x == n)[..., None], self.mask_embed.to(tokens.dtype), tokens)
        slot = self.backbone.query_embed[0] + self.time_mlp(sinusoidal_embedding(t.float(), TIME_FEATURES))
        if shift is not None:
            slot = slot + shift
        return torch.cat([slot[:, None].to(tokens.dtype), tokens], 1)

    def bin_logits(self, states: Tensor) -> Tensor:
        """states [N, m, H] final hidden states -> [N, m, num_bins] float logits of the LM head's bin rows."""
        head = self.backbone.model.get_output_embeddings()
        bias = None if head.bias is None else head.bias[self.bin_ids]
        return F.linear(states, head.weight[self.bin_ids], bias).float()

    def targets(self, target: Tensor, mask: Tensor | None) -> Tensor:
        """target [B, T, D] in action units -> x_1 [B, T, D] bin ids (padded entries binned from 0)."""
        x = self.normalizer.normalize(target)
        return self.bins.encode(x if mask is None else x.masked_fill(~mask, 0.0))

    # ---- the contract -----------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> DecoderLoss:
        """Cross-entropy of the LM head's bin logits against x_1, at x_t ~ p_t(. | x_1), t ~ U(0, t_max)."""
        from driftkit.backbones.action_block import BlockCache, block_positions, cached_block_states, uncached_states

        images, prompts, state = self.inputs(batch)
        b = len(prompts)
        target, mask = action_target(batch, self.config, b)
        dev = self.backbone.device
        mask = None if mask is None else mask.to(dev)
        x_1 = self.targets(target.to(dev), mask)
        t = torch.rand(b, device=dev) * self.flow.t_max
        x_t = self.path.sample_xt(x_1, t)
        embeds = self.block_embeddings(x_t.flatten(1), t, self.state_shift(state))
        if self.backbone.config.mode == "frozen":  # nothing in the prefix trains: run it once without autograd
            with torch.no_grad():
                prefix = self.backbone.encode_prefix(images, prompts)
            inputs = prefix.inputs
            states = cached_block_states(self.backbone, BlockCache(prefix, self.slots), embeds,
                                         block_positions(inputs, self.slots),
                                         inputs.attention_mask[:, :inputs.prefix_len].bool())
        else:
            inputs = self.backbone.prepare(images, prompts)
            states = uncached_states(self.backbone, inputs, embeds)[:, inputs.prefix_len:]
        logits = self.bin_logits(states[:, 1:])  # [B, P, V]
        ce = F.cross_entropy(logits.flatten(0, 1), x_1.flatten(), reduction="none").view_as(x_1)
        loss = masked_mean(ce, mask)
        acc = masked_mean((logits.argmax(-1).view_as(x_1) == x_1).float(), mask)
        return DecoderLoss(loss, {"loss": loss.item(), "token_acc": acc.item()})

    @torch.no_grad()
    def sample(self, obs: dict, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, timer: StageTimer | None = None,
               temperature: float | None = None, inpaint: Inpaint | None = None) -> Tensor:
        """obs -> [B, K, T, D]: refinement with the config's block_cache (see refine)."""
        if temperature is not None:
            raise ValueError(f"a dfm policy has no sampling temperature; got temperature={temperature!r} (pass None)")
        if inpaint is not None:
            raise ValueError("a dfm policy cannot inpaint a prefix (real-time chunking); use a flow or drift policy")
        return self.refine(obs, num_samples, steps, generator, timer).actions

    @torch.no_grad()
    def refine(self, obs: dict, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, timer: StageTimer | None = None,
               cache: str | None = None, refresh_every: int | None = None, record: bool = False) -> Refinement:
        """The refinement behind sample(), with the cache mode (none / prefix / adaptive) and refresh_every
        overridable per call (None = the config's); record keeps every step's posterior in .stats.trace."""
        from driftkit.backbones.action_block import BlockPosterior
        from driftkit.flow.discrete import ctmc_euler

        check_positive("num_samples", num_samples)
        if steps is not None:
            check_positive("steps", steps)
        cache = cache or self.config.block_cache
        check_choice("cache", cache, ("none", "prefix", "adaptive"))
        stage, k = stage_of(timer), num_samples
        with stage("preprocess"):
            images, prompts, state = self.inputs(obs)
        with stage("prefix"):
            context = self._context(images, prompts, k, cache)
        with stage("decoder"):
            n = len(prompts) * k
            shift = self.state_shift(state)
            shift = None if shift is None else shift.repeat_interleave(k, 0)
            posterior = BlockPosterior(self.backbone, context, lambda x, t: self.block_embeddings(x, t, shift),
                                       self.bin_logits, cache, refresh_every or self.config.refresh_every, record)
            shape = (n, *self.config.target_shape)
            x_0 = self.path.source(shape, self.backbone.device, generator)
            ids = ctmc_euler(posterior, x_0, self.path, steps or self.flow.steps, self.flow.validation_steps,
                             self.flow.t_max, generator)
            actions = self.normalizer.unnormalize(self.bins.decode(ids).to(self.backbone.device))
        return Refinement(actions.view(len(prompts), k, *self.config.target_shape), ids, posterior.stats)

    def _context(self, images, prompts, k: int, cache: str):
        """The prefix of B rows repeated K times: laid out for uncached passes (cache="none"), or encoded once
        into a BlockCache."""
        from driftkit.backbones.action_block import BlockCache, BlockContext, block_positions

        if cache == "none":
            rep = lambda rows: [r for r in rows for _ in range(k)]  # noqa: E731  (row-major, as repeat_interleave)
            inputs = self.backbone.prepare(rep(images), rep(prompts))
            mask = inputs.attention_mask[:, :inputs.prefix_len].bool()
            return BlockContext(mask, block_positions(inputs, self.slots), inputs=inputs)
        prefix = self.backbone.encode_prefix(images, prompts)
        inputs, batch_dim = prefix.inputs, 1 if prefix.inputs.position_ids.dim() == 3 else 0
        mask = inputs.attention_mask[:, :inputs.prefix_len].bool().repeat_interleave(k, 0)
        positions = block_positions(inputs, self.slots).repeat_interleave(k, batch_dim)
        return BlockContext(mask, positions, cache=BlockCache(prefix, self.slots, k))

    def nfe(self, steps: int | None = None) -> int:
        """LM passes over the block per chunk (the adaptive cache may skip some and runs most on few slots)."""
        return (steps or self.flow.steps) + self.flow.validation_steps
