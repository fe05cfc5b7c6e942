"""Free-text queries on a trained text-query run.

    query(run_dir, image, ["circle", "red disk", "hexagon"]) -> [{query, seen, box, score}, ...]

Any text is accepted. Queries the model was trained with are `seen`; the others (synonyms,
classes it never saw) are answered the same way but flagged `seen: False`, and reported apart
by the analysis, because their quality rests entirely on the text embedding's notion of
similarity.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from visiondoctor.config import load_config
from visiondoctor.data.images import load_rgb
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.models.text_query.encoder import EmbeddingCache, normalise_query
from visiondoctor.models.text_query.model import TextQueryDetector
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.pipeline import load_run_model

log = logging.getLogger(__name__)
EMBEDDING_CACHE = "text_embeddings.json"  # in the run directory


def forward_raw(model: TextQueryDetector, images: Sequence[torch.Tensor],
                query_embeddings: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """The per-location outputs (sim_logits, boxes, quality_logits, centres, grid) and the image sizes."""
    batch, sizes = model.batch_images(images)
    queries = model.class_embeddings if query_embeddings is None else query_embeddings.to(batch.device)
    return model.head(model.backbone(batch), queries), sizes


@torch.no_grad()
def detect(model: TextQueryDetector, images: Sequence[torch.Tensor], query_embeddings: torch.Tensor,
           max_per_query: int = 100) -> list[dict[str, torch.Tensor]]:
    """Detections per image for each query (label = index into query_embeddings), at most
    `max_per_query` per query and image, as if each query had been asked alone."""
    model.eval()
    out, sizes = forward_raw(model, images, query_embeddings)
    return model.postprocess(out, sizes, max_detections=max_per_query, per_query=True)


def embedding_cache(run: RunDir, encoder: str) -> EmbeddingCache:
    return EmbeddingCache(encoder, run.path / EMBEDDING_CACHE)


def run_encoder(run: RunDir) -> str:
    """The text encoder a run was trained with (recorded, resolved, in its config)."""
    return str(load_config(run.config).model.kwargs.get("encoder", "hashed"))


def _as_tensor(image: Any) -> torch.Tensor:
    """A path, a PIL image, a uint8 tensor (0-255) or a float tensor (0-1) -> float (3, H, W) in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = load_rgb(Path(image))
    elif not isinstance(image, torch.Tensor):
        image = pil_to_tensor(image.convert("RGB"))
    return image.float().div(255.0) if image.dtype == torch.uint8 else image.float()


def query(run_dir: str | Path, image: Any, queries: Sequence[str], score_threshold: float = 0.3,
          max_per_query: int = 100, device: str = "auto") -> list[dict[str, Any]]:
    """Detections of each text query in one image, best first: {query, seen, box (xyxy px), score}."""
    if not queries:
        raise ValueError("no text queries given")
    run = RunDir.open(run_dir)
    torch_device = resolve_device(device)
    model, _cfg, category_map = load_run_model(run, torch_device)
    trained = {normalise_query(n) for n in category_map.names}
    unseen = [q for q in queries if normalise_query(q) not in trained]
    if unseen:
        log.info("queries not seen in training (answered by text similarity alone): %s", ", ".join(unseen))
    embeddings = embedding_cache(run, run_encoder(run)).embed(list(queries))
    result = detect(model, [_as_tensor(image).to(torch_device)], embeddings.to(torch_device), max_per_query)[0]
    found = [{"query": queries[int(label)], "seen": queries[int(label)] not in unseen,
              "box": [round(float(v), 2) for v in box], "score": round(float(score), 5)}
             for box, score, label in zip(result["boxes"], result["scores"], result["labels"])
             if float(score) >= score_threshold]
    return sorted(found, key=lambda d: -d["score"])
