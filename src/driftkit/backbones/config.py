"""Typed configuration and outputs of a VLM backbone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor

from driftkit.backbones.reduce import SCORES as VISUAL_SCORES
from driftkit.errors import check_choice, check_fraction, check_positive

MODES = ("frozen", "lora", "full")


@dataclass
class BackboneConfig:
    """How a VLM is loaded and read out."""

    source: str
    """A preset name (see driftkit.backbones.list_presets()) or a local checkpoint directory."""
    family: str | None = None
    """VLM family; None = from the preset name or the checkpoint's config.json model_type."""
    num_query_tokens: int = 8
    """Q, special tokens appended to every prompt; their hidden states are the condition."""
    query_token: str = "<|act_{i}|>"
    """Format of the query tokens' strings ({i} = 0..Q-1), e.g. "<|box_{i}|>"."""
    prompt_format: str = "{prompt}"
    """Text that follows the image, with {prompt} replaced by each prompt (e.g. the tail of a chat template:
    "{prompt}<|im_end|>\\n<|im_start|>assistant\\n"); the query tokens come right after it."""
    layer: int = -1
    """Which hidden state to read (index into hidden_states: 0 = embeddings, -1 = final, after the norm)."""
    num_layers: int | None = None
    """Run only the first N decoder layers of the language model; the rest are dropped when the model is built
    (SmolVLA keeps the first half of its VLM's). With cond="cache" and the layer-wise expert, the prefix pass
    then costs about N / depth of the full one. None = every layer."""
    max_length: int = 1024
    """Most tokens in one row: image placeholders + prompt + query tokens."""
    mode: str = "frozen"
    """frozen (only the query-token embeddings train), lora, or full."""
    lora_rank: int = 16
    """LoRA rank when mode = lora."""
    lora_alpha: float = 32.0
    """LoRA scale numerator when mode = lora."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA adapts when mode = lora."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    seed: int = 0
    """Initialisation seed of a randomly initialised preset."""
    image_size: int | None = None
    """Presets only: input image side in pixels (None = the preset's default, tiny 64 and mid 224). Qwen
    families round it down to a multiple of 28 (32 for Qwen3-VL); SmolVLM and PaliGemma need a multiple of 32
    and 16. A local checkpoint keeps its own processor's size."""
    visual_keep: float = 1.0
    """Training-free visual token reduction (driftkit.backbones.reduce): the share of each image's tokens kept,
    the round(visual_keep * N) with the highest visual_score; 1.0 = no reduction. Qwen2-VL, Qwen2.5-VL, SmolVLM."""
    visual_merged: int = 4
    """With visual_keep < 1: the tokens left out are merged by cosine similarity into this many more (at most
    as many as were left out); 0 = drop them."""
    visual_score: str = "norm"
    """How dominant tokens are ranked: "norm" (L2 norm of the encoder's output feature) or "attention" (the
    mean attention each token receives in a parameter-free self-attention over the image's features)."""
    static_prefix_len: int | None = None
    """Static shapes (driftkit.backbones.static): left-pad every prefix to this many columns, so one compiled
    graph (and one StaticCache) serves every call; a longer prefix is an error. None = each batch's own length."""
    batch_buckets: tuple[int, ...] = ()
    """Static shapes: pad a batch of B rows to the smallest bucket >= B by repeating its last row (the outputs
    are sliced back to B); () = no batch padding. A batch larger than every bucket is an error."""
    image_labels: tuple[str, ...] = ()
    """Text placed before each camera's image block, one per camera in camera order: the frames of a clip
    given as cameras with their timestamps, as Qwen3-VL writes "<1.8 seconds>" before each video frame;
    () = image blocks with nothing between them. Rows must then have exactly len(image_labels) images."""

    def __post_init__(self):
        check_positive("num_query_tokens", self.num_query_tokens)
        check_positive("max_length", self.max_length)
        if self.num_layers is not None:
            check_positive("num_layers", self.num_layers)
        check_choice("mode", self.mode, MODES)
        check_positive("lora_rank", self.lora_rank)
        if self.image_size is not None:
            check_positive("image_size", self.image_size)
        if self.num_query_tokens > 1 and "{i}" not in self.query_token:
            raise ValueError(f"got query_token={self.query_token!r} with num_query_tokens={self.num_query_tokens}; "
                             "the format needs '{i}' to make distinct tokens")
        self.lora_targets = tuple(self.lora_targets)
        check_fraction("visual_keep", self.visual_keep)
        check_positive("visual_merged", self.visual_merged, allow_zero=True)
        check_choice("visual_score", self.visual_score, VISUAL_SCORES)
        if self.static_prefix_len is not None:
            check_positive("static_prefix_len", self.static_prefix_len)
        self.batch_buckets = tuple(sorted(int(b) for b in self.batch_buckets))
        if any(b < 1 for b in self.batch_buckets):
            raise ValueError(f"got batch_buckets={self.batch_buckets}, every bucket must be >= 1")
        self.image_labels = tuple(self.image_labels)
        if not all(isinstance(t, str) for t in self.image_labels):
            raise TypeError(f"got image_labels={self.image_labels!r}; each label must be a string")
        if "{prompt}" not in self.prompt_format:
            raise ValueError(f"got prompt_format={self.prompt_format!r}; it must contain '{{prompt}}'")

    def query_strings(self) -> list[str]:
        return [self.query_token.format(i=i) for i in range(self.num_query_tokens)]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VLMFeatures:
    """What a backbone hands to a decoder for B rows."""

    query: Tensor
    """[B, Q, H] hidden states at the query tokens (the chosen layer)."""
    prefix: Tensor
    """[B, L, H] hidden states of the image + prompt prefix (left-padded; see prefix_mask)."""
    prefix_mask: Tensor
    """[B, L] bool, True at real prefix tokens."""
    cache: object | None = field(default=None, repr=False)
    """transformers DynamicCache of the prefix when it was kept (encode(..., use_cache=True))."""

    @property
    def pooled(self) -> Tensor:
        """[B, Q * H] the query states flattened: a decoder's cond [B, C] with C = Q * H."""
        return self.query.flatten(1)
