"""The last layers of a pretrained sentence encoder as trainable parameters, run on cached token states.

``SentenceEncoder(..., finetune_layers=K)`` copies the last ``K`` transformer layers of the frozen model into
a :class:`TrainableTop` (parameters of the backbone: meta-trained, saved in checkpoints) and caches, per text,
the token states that enter them (:func:`token_states`, float16). A training step then runs only those
``K`` layers, the model's mean pooling and its L2 normalisation, so fine-tuning MiniLM's last two layers
costs about a CPU-second per 150 texts. Before any training the output equals the frozen encoder's
embeddings up to the float16 rounding of the cached states.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnmeta.errors import UserError

__all__ = ["TrainableTop", "token_states", "pad_states"]


def _blocks(st: Any) -> nn.ModuleList:
    auto = getattr(st[0], "auto_model", None)
    blocks = getattr(getattr(auto, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise UserError("finetune_layers needs a BERT-style sentence-transformers model (its transformer "
                        "has encoder.layer); use finetune_layers=0 with this model")
    return blocks


def _mean_pooling(st: Any) -> bool:
    for module in st:
        if type(module).__name__ == "Pooling":
            config = module.get_config_dict()
            if config.get("pooling_mode") == "mean" or config.get("pooling_mode_mean_tokens"):
                return not any(v for k, v in config.items() if k.startswith("pooling_mode_")
                               and k != "pooling_mode_mean_tokens")
    return False


def _run_layers(layers: Iterable[nn.Module], h: Tensor, mask: Tensor) -> Tensor:
    """Token states ``h [n, L, D]`` through BERT layers, padding (``mask [n, L]`` False) masked out."""
    additive = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=h.dtype, device=h.device)
    additive.masked_fill_(~mask[:, None, None, :], torch.finfo(h.dtype).min)
    for layer in layers:
        out = layer(h, attention_mask=additive)
        h = out[0] if isinstance(out, tuple) else out
    return h


class TrainableTop(nn.Module):
    """Copies of the last ``layers`` transformer layers of ``st`` (a ``SentenceTransformer``), then mean
    pooling over the tokens and, when ``st`` ends in a ``Normalize`` module, L2 normalisation.

    ``forward(states [n, L, D], mask [n, L] bool) -> [n, D]``; ``states`` enter layer ``start``.
    """

    def __init__(self, st: Any, layers: int) -> None:
        super().__init__()
        blocks = _blocks(st)
        if not 1 <= int(layers) <= len(blocks):
            raise UserError(f"finetune_layers must be between 0 and the model's {len(blocks)} layers, got "
                            f"{layers}")
        if not _mean_pooling(st):
            raise UserError("finetune_layers supports models with mean pooling only (this one pools "
                            "otherwise); use finetune_layers=0")
        self.start = len(blocks) - int(layers)
        self.layers = nn.ModuleList(copy.deepcopy(blocks[i]) for i in range(self.start, len(blocks)))
        for parameter in self.layers.parameters():
            parameter.requires_grad_(True)
        self.normalize = any(type(module).__name__ == "Normalize" for module in st)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        h = _run_layers(self.layers, states, mask)
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def token_states(st: Any, texts: Sequence[str], start: int, batch_size: int) -> list[np.ndarray]:
    """The frozen token states entering layer ``start`` of ``st`` for each text: float16 ``[L_i, D]`` (the
    text's tokens, padding removed; truncated at the model's ``max_seq_length``)."""
    transformer, below = st[0], _blocks(st)[:start]   # the layers above ``start`` are not run
    rows: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            encoded = transformer.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                            max_length=st.max_seq_length, return_tensors="pt")
            keep = encoded["attention_mask"].bool()
            h = transformer.auto_model.embeddings(input_ids=encoded["input_ids"],
                                                  token_type_ids=encoded.get("token_type_ids"))
            for row, kept in zip(_run_layers(below, h, keep), keep):
                rows.append(row[kept].numpy().astype(np.float16))
    return rows


def pad_states(rows: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Ragged ``[L_i, D]`` rows -> float32 ``[n, max L, D]`` (zeros after each text) and a bool mask
    ``[n, max L]``."""
    width = max(len(r) for r in rows)
    states = np.zeros((len(rows), width, rows[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        states[i, :len(row)] = row
        mask[i, :len(row)] = True
    return torch.from_numpy(states), torch.from_numpy(mask)
