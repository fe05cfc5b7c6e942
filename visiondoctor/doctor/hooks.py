"""Instrumentation for probe forwards: context managers that record what a model does.

Each recorder measures one thing while the model runs (feature-map sizes, autocast state,
RoI pooling calls, anchors, matcher decisions) and removes itself on exit, so probes never
change the model. `preserved_state` restores buffers, train/eval flags and gradients that a
probe forward or backward may have changed.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection.anchor_utils import (
    AnchorGenerator,
    DefaultBoxGenerator,
)

ANCHOR_CLASS_NAME = re.compile(r"anchor|prior|defaultbox", re.IGNORECASE)


@contextlib.contextmanager
def removing(handles: list[Any]) -> Iterator[None]:
    """Remove the hooks in `handles` when the block ends, however it ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def tensors_4d(obj: Any) -> list[torch.Tensor]:
    """Every 4-D tensor in a module output: a tensor, a dict/OrderedDict of them, or a list/tuple."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.dim() == 4 else []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tensors_4d(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_4d(v)]
    return []


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run probes on `model` and give it back unchanged: buffers (BatchNorm running stats),
    per-module train/eval flags, parameter gradients and the global RNG state."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    grads = {name: (None if p.grad is None else p.grad.detach().clone()) for name, p in model.named_parameters()}
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]
        for name, p in model.named_parameters():
            p.grad = grads.get(name)
        torch.set_rng_state(rng)


@dataclass
class FeatureMapRecord:
    """Spatial sizes of every 4-D output, and the size of the image entering the first convolution."""

    reference_hw: tuple[int, int] | None = None
    outputs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def strides(self, name: str) -> list[float]:
        if self.reference_hw is None:
            return []
        return [self.reference_hw[1] / w for _, w in self.outputs.get(name, [])]


@contextlib.contextmanager
def record_feature_maps(model: nn.Module) -> Iterator[FeatureMapRecord]:
    """Record each module's 4-D output sizes; the reference image size is the input of the first Conv2d call
    (after any resizing/padding transform the model applies itself)."""
    rec = FeatureMapRecord()
    handles = []

    def pre_conv(_m: nn.Module, args: tuple) -> None:
        if rec.reference_hw is None and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            rec.reference_hw = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    def make_hook(name: str):
        def hook(_m: nn.Module, _args: tuple, output: Any) -> None:
            maps = tensors_4d(output)
            if maps:
                rec.outputs.setdefault(name, []).extend((int(t.shape[-2]), int(t.shape[-1])) for t in maps)

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_pre_hook(pre_conv))
        if name:
            handles.append(m.register_forward_hook(make_hook(name)))
    with removing(handles):
        yield rec


def autocast_enabled() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


@contextlib.contextmanager
def record_autocast(model: nn.Module) -> Iterator[dict[str, bool]]:
    """For every module that owns parameters, whether autocast was enabled when it ran (last call wins)."""
    seen: dict[str, bool] = {}
    handles = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            def hook(_m: nn.Module, _args: tuple, _name: str = name) -> None:
                seen[_name] = autocast_enabled()

            handles.append(m.register_forward_pre_hook(hook))
    with removing(handles):
        yield seen


@dataclass
class RoICall:
    op: str  # "roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"
    feature_hw: tuple[int, int]
    spatial_scale: float
    num_rois: int


class _RoIRecorder(TorchDispatchMode):
    """Sees every torchvision RoI pooling op however it was imported (function, RoIAlign, MultiScaleRoIAlign),
    because it sits at the dispatcher, below all Python wrappers."""

    OPS = ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[RoICall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        packet = getattr(func, "_overloadpacket", None)
        qual = str(packet) if packet is not None else str(func)
        if qual.startswith("torchvision."):
            op = qual.split(".", 1)[1]
            if op in self.OPS and len(args) >= 3:
                feats, rois, scale = args[0], args[1], args[2]
                self.calls.append(RoICall(op, (int(feats.shape[-2]), int(feats.shape[-1])), float(scale), int(rois.shape[0])))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def record_roi_calls() -> Iterator[list[RoICall]]:
    rec = _RoIRecorder()
    with rec:
        yield rec.calls


@dataclass
class AnchorRecord:
    """Anchors one generator produced, in the frame of the image tensor it was given."""

    module: str
    anchors: list[torch.Tensor]  # per image, [N, 4] xyxy
    image_hw: tuple[int, int] | None  # padded batch tensor size, when the generator receives an ImageList
    levels: list[tuple[int, int, int]]  # per feature map: (h, w, anchors per location)


def anchor_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """torchvision's AnchorGenerator / DefaultBoxGenerator, or a user's module named like one."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, (AnchorGenerator, DefaultBoxGenerator)) or (name and ANCHOR_CLASS_NAME.search(type(m).__name__)):
            found.append((name, m))
    return found


def _num_anchors_per_location(m: nn.Module) -> list[int] | None:
    fn = getattr(m, "num_anchors_per_location", None)
    try:
        return list(fn()) if callable(fn) else None
    except Exception:  # a user's module with another signature
        return None


@contextlib.contextmanager
def record_anchors(model: nn.Module) -> Iterator[list[AnchorRecord]]:
    records: list[AnchorRecord] = []
    handles = []
    for name, m in anchor_modules(model):
        def hook(mod: nn.Module, args: tuple, output: Any, _name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                anchors = [output.detach().reshape(-1, 4)] if output.shape[-1] == 4 else []
            elif isinstance(output, (list, tuple)):
                anchors = [a.detach().reshape(-1, 4) for a in output if isinstance(a, torch.Tensor) and a.shape[-1] == 4]
            else:
                anchors = []
            if not anchors:
                return
            image_hw = None
            levels: list[tuple[int, int, int]] = []
            if args and hasattr(args[0], "tensors"):
                image_hw = (int(args[0].tensors.shape[-2]), int(args[0].tensors.shape[-1]))
            per_loc = _num_anchors_per_location(mod)
            if len(args) > 1 and isinstance(args[1], (list, tuple)) and per_loc and len(per_loc) == len(args[1]):
                levels = [(int(f.shape[-2]), int(f.shape[-1]), a) for f, a in zip(args[1], per_loc)]
            records.append(AnchorRecord(_name, anchors, image_hw, levels))

        handles.append(m.register_forward_hook(hook))
    with removing(handles):
        yield records


@dataclass
class MatchStats:
    """What a matcher decided for one image: IoU of each positive with its ground truth."""

    num_gt: int
    num_candidates: int
    positive_ious: torch.Tensor  # [P]
    best_iou_per_gt: torch.Tensor  # [G]


class _RecordingMatcher:
    """Stands in for a torchvision Matcher (or any matcher called with an IoU matrix [G, N]); delegates
    every attribute to the original and, for each active recorder, records the IoU of the positives it
    returns. Several recorders (a training monitor and a probe) can share one wrapper."""

    def __init__(self, inner: Any, owner: nn.Module, attr: str, where: str) -> None:
        self._inner = inner
        self._owner = owner
        self._attr = attr
        self._where = where
        self._recorders: list[MatchRecorder] = []

    def __call__(self, match_quality_matrix: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        matches = self._inner(match_quality_matrix, *args, **kwargs)
        active = [r for r in self._recorders if r.active]
        if active:
            try:
                with torch.no_grad():
                    mqm = match_quality_matrix.detach()
                    pos = torch.nonzero(matches >= 0).flatten()
                    ious = mqm[matches[pos], pos] if pos.numel() else mqm.new_zeros(0)
                    best = mqm.max(dim=1).values if mqm.numel() else mqm.new_zeros(mqm.shape[0])
                    stats = MatchStats(int(mqm.shape[0]), int(mqm.shape[1]), ious.float().cpu(), best.float().cpu())
                for r in active:
                    r.records.setdefault(self._where, []).append(stats)
            except Exception:  # noqa: BLE001 — recording must never break the model's own step
                pass
        return matches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def matcher_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner module, attribute name) of every matcher object held by a module."""
    slots = []
    for _, m in model.named_modules():
        for attr, value in vars(m).items():
            if attr.startswith("_"):
                continue
            if type(value).__name__.endswith("Matcher") and callable(value):
                slots.append((m, attr))
    return slots


class MatchRecorder:
    """Wraps every matcher of a model (install/remove); records only while `active`, so a training
    monitor can leave it installed and pay for recording on the steps it samples."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = False
        self.records: dict[str, list[MatchStats]] = {}
        self._joined: list[_RecordingMatcher] = []

    def install(self) -> "MatchRecorder":
        names = {id(m): n for n, m in self.model.named_modules()}
        for owner, attr in matcher_slots(self.model):
            wrapper = getattr(owner, attr)
            if not isinstance(wrapper, _RecordingMatcher):
                owner_name = names.get(id(owner), "")
                wrapper = _RecordingMatcher(wrapper, owner, attr, f"{owner_name}.{attr}" if owner_name else attr)
                setattr(owner, attr, wrapper)
            if self not in wrapper._recorders:
                wrapper._recorders.append(self)
                self._joined.append(wrapper)
        return self

    def remove(self) -> None:
        """Leave every wrapper; the last recorder to leave puts the original matcher back."""
        for wrapper in self._joined:
            if self in wrapper._recorders:
                wrapper._recorders.remove(self)
            if not wrapper._recorders and getattr(wrapper._owner, wrapper._attr, None) is wrapper:
                setattr(wrapper._owner, wrapper._attr, wrapper._inner)
        self._joined.clear()

    @property
    def installed(self) -> bool:
        return bool(self._joined)

    def take(self) -> dict[str, list[MatchStats]]:
        out, self.records = self.records, {}
        return out


@contextlib.contextmanager
def record_matches(model: nn.Module) -> Iterator[dict[str, list[MatchStats]]]:
    """Wrap every matcher of the model for the duration; yields {owner path.attr: [MatchStats per call]}."""
    rec = MatchRecorder(model).install()
    rec.active = True
    try:
        yield rec.records
    finally:
        rec.remove()


@contextlib.contextmanager
def capture_outputs(modules: Sequence[tuple[str, nn.Module]]) -> Iterator[dict[str, Any]]:
    """Keep the (detached) last output of each given module."""
    out: dict[str, Any] = {}
    handles = []
    for name, m in modules:
        def hook(_m: nn.Module, _a: tuple, output: Any, _name: str = name) -> None:
            out[_name] = detach_tree(output)

        handles.append(m.register_forward_hook(hook))
    with removing(handles):
        yield out


def detach_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, Mapping):
        return {k: detach_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_tree(v) for v in obj) if not hasattr(obj, "_fields") else obj
    return obj
