"""How big and how fast a detector is: parameters, FLOPs, eager latency per image.

Latency is measured one image at a time (batch 1, the deployment case) on an image of the
model's input size, with evaluation/latency.py's timer (warm-up, median and mean); FLOPs are
counted by torch.utils.flop_counter (2 per multiply-add of the convolutions and matrix products;
postprocessing such as NMS is not counted).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from visiondoctor.evaluation.latency import time_variants, torch_threads


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, images: list[torch.Tensor]) -> int | None:
    """FLOPs of one eval-mode forward pass on `images`; None when the counter cannot run the model."""
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(images)
    except Exception:  # noqa: BLE001 - an exotic op the counter cannot trace leaves FLOPs unknown, not an error
        return None
    return int(counter.get_total_flops())


def example_image(image_size: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """A float CHW image in [0, 1] of `image_size` x `image_size`: `image` (uint8 or float) resized,
    or uniform noise when none is given (then detections, hence NMS time, are arbitrary)."""
    if image is None:
        return torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return torch.nn.functional.interpolate(image[None], size=(image_size, image_size), mode="bilinear",
                                           align_corners=False)[0].clamp(0, 1)


@torch.no_grad()
def measure_model(model: nn.Module, image_size: int, device: str | torch.device = "cpu", runs: int = 20,
                  warmup: int = 3, image: torch.Tensor | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Eager PyTorch latency of `model` (eval mode, batch 1, `threads` intra-op threads; None = as
    set) with its parameter and FLOP counts: {latency_ms_median, latency_ms_mean, params, flops,
    device, image_size, runs, threads}."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = example_image(image_size, image).to(device)
    with torch_threads(threads):
        stats = time_variants({"pytorch": lambda item: model([item])}, [x] * runs, warmup)["pytorch"]
        used_threads = torch.get_num_threads()
    return {"latency_ms_median": stats.median_ms, "latency_ms_mean": stats.mean_ms, "params": count_params(model),
            "flops": count_flops(model, [x]), "device": str(device), "image_size": image_size, "runs": runs,
            "threads": used_threads}
