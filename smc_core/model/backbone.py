"""A tiny Qwen2 transformer over bar tokens, and the classifier built around it.

Why Qwen2: its decoder (RMSNorm, rotary positions, grouped-query attention, SwiGLU) is a
well-tested modern block that peft knows how to LoRA-adapt, and ``Qwen2Model`` takes
``inputs_embeds`` directly, so bars need no vocabulary: each bar becomes one token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model

from smc_core.model.encoding import EncoderSpec
from smc_core.model.errors import ModelError

# Attention kernel: on CPU the fused SDPA kernel is both the fastest and the only one that
# does not collapse with 2 intra-op threads (measured: eager is ~5x slower there).
ATTENTION = "sdpa"


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the transformer; the defaults keep a CPU epoch on ~20k windows to seconds."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 64
    rope_theta: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ModelError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")

    def to_qwen2(self) -> Qwen2Config:
        config = Qwen2Config(
            vocab_size=1,  # tokens arrive as embeddings; the unused token table stays one row
            hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=self.max_positions,
            rope_theta=float(self.rope_theta), attention_dropout=float(self.dropout), use_cache=False,
        )
        config._attn_implementation = ATTENTION
        return config

    @classmethod
    def from_qwen2(cls, config: Qwen2Config) -> "BackboneConfig":
        rope = getattr(config, "rope_parameters", None) or {}
        return cls(hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                   num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
                   intermediate_size=config.intermediate_size, max_positions=config.max_position_embeddings,
                   rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
                   dropout=float(config.attention_dropout))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "BackboneConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def check_checkpoint(checkpoint: Path) -> Path:
    """A local Qwen2 checkpoint directory, checked in milliseconds before any data or weights load."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise ModelError(f"backbone checkpoint {path} does not exist or is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"backbone checkpoint {path} has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ModelError(f"backbone checkpoint {path}: config.json is not a JSON object ({error})") from None
    if model_type != "qwen2":
        raise ModelError(f"backbone checkpoint {path}: config.json model_type is {model_type!r}, expected 'qwen2'")
    return path


def build_backbone(config: BackboneConfig | None = None, checkpoint: Path | None = None) -> Qwen2Model:
    """A randomly initialised backbone from ``config``, or a local Qwen2 checkpoint directory.

    The checkpoint is checked before anything loads, so a wrong path fails in milliseconds
    rather than after a data pipeline ran; a ``config`` that disagrees with it is an error.
    """
    if checkpoint is None:
        return Qwen2Model((config or BackboneConfig()).to_qwen2())
    path = check_checkpoint(checkpoint)
    try:
        backbone = Qwen2Model.from_pretrained(path, local_files_only=True, attn_implementation=ATTENTION)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"backbone checkpoint {path} cannot be loaded: {error}") from None
    found = BackboneConfig.from_qwen2(backbone.config)
    if config is not None and found != config:
        differing = [f.name for f in fields(config) if getattr(config, f.name) != getattr(found, f.name)]
        raise ModelError(f"backbone checkpoint {path} does not match the requested config: "
                         + ", ".join(f"{name} {getattr(found, name)} != {getattr(config, name)}" for name in differing))
    return backbone


class BarClassifier(nn.Module):
    """Bar tokens -> Qwen2 -> linear head on the last bar, which (causally) has seen every bar.

    ``n_classes`` is 3 for long/short/skip and the number of return buckets when the same
    network is pretrained on the next-bar objective; only the head differs between the two.
    """

    HEAD = "head."
    TOKEN_TABLE = "backbone.embed_tokens.weight"

    def __init__(self, n_numeric: int, cardinalities: tuple[int, ...], backbone: nn.Module, n_classes: int = 3):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.bar_projection = nn.Linear(n_numeric, hidden)
        self.category_embeddings = nn.ModuleList(nn.Embedding(int(c), hidden) for c in cardinalities)
        self.backbone = backbone
        self.head = nn.Linear(hidden, n_classes)

    @classmethod
    def for_spec(cls, spec: EncoderSpec, backbone_config: BackboneConfig | None = None, n_classes: int = 3,
                 checkpoint: Path | None = None) -> "BarClassifier":
        if checkpoint is None:
            backbone_config = backbone_config or BackboneConfig()
        backbone = build_backbone(backbone_config, checkpoint)
        max_positions = backbone.config.max_position_embeddings
        if spec.sequence_length > max_positions:
            raise ModelError(f"sequence_length {spec.sequence_length} exceeds the backbone's "
                             f"max_positions {max_positions}")
        return cls(spec.n_numeric, spec.cardinalities, backbone, n_classes)

    def bar_tokens(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """[B, L, n_num] and [B, L, n_cat] -> [B, L, hidden]: one token per bar."""
        tokens = self.bar_projection(numeric)
        for column, embedding in enumerate(self.category_embeddings):
            tokens = tokens + embedding(categorical[..., column])
        return tokens

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        tokens = self.bar_tokens(numeric, categorical)
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        hidden = self.backbone(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        return self.head(hidden[:, -1])

    def body_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the head (and the unused token table): what pretraining hands to fine-tuning.

        Bars arrive as embeddings, so a checkpoint's vocabulary (150k rows for Qwen2.5) is
        dead weight; leaving it out lets the body load into a one-row-vocabulary rebuild.
        """
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(self.HEAD) and k != self.TOKEN_TABLE}


def batched_logits(model: nn.Module, numeric, categorical, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, n_classes] (float32, CPU) in fixed-size chunks, so memory stays flat for any N.

    The caller picks the grad mode (training validation, inference_mode for serving).
    """
    device = next(model.parameters()).device
    numeric, categorical = torch.as_tensor(numeric), torch.as_tensor(categorical)
    chunks = [model(numeric[i:i + batch_size].to(device), categorical[i:i + batch_size].to(device)).float().cpu()
              for i in range(0, len(numeric), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, model.head.out_features)
