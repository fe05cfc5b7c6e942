"""Probe forwards: measure what a model does on a sample batch, never assume it.

`run_probes` runs short passes on the model itself, with its state preserved and restored:

1. a training forward + backward (the tensor entering the first convolution, the ground truth in
   the frame the model works in, matcher decisions, BatchNorm running-stat changes, gradients,
   autocast state per module; for segmentation, what the outputs are);
2. a training forward under autocast (bf16 on CPU) to see which modules switch it off;
3. an eval forward (feature-map sizes per module, RoI pooling calls, outputs, the output contract);
4. experiments (visiondoctor.doctor.experiments, .priors): the model's priors found by measurement,
   the loss's response when the boxes move, a segmentation loss's response to void pixels.

A pass that fails keeps its exception in `Observation.errors`; visiondoctor.doctor.failures turns
it into a finding that names the likely cause. The other passes still run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor import hooks, introspect
from visiondoctor.doctor.experiments import (
    AssignmentResponse,
    VoidResponse,
    assignment_response,
    void_response,
)
from visiondoctor.doctor.model_io import ModelIO, split_segmentation_outputs, total_loss
from visiondoctor.doctor.priors import Priors, discover_priors


@dataclass
class BatchNormState:
    name: str
    training: bool
    params_frozen: bool  # the BN's own affine params do not require grad (or it has none)
    frozen_owner: str | None  # the largest enclosing module whose every parameter is frozen
    changed: bool  # running stats moved during one training forward
    max_abs_change: float


@dataclass
class InputStats:
    """The tensor the model's first convolution receives (the pixels as the network sees them)."""

    shape: tuple[int, ...]
    min: float
    max: float
    mean: float
    std: float
    smallest_image_std: float  # the most uniform image of the batch

    @classmethod
    def of(cls, x: torch.Tensor) -> "InputStats":
        x = x.detach().float()
        per_image = x.reshape(x.shape[0], -1).std(1) if x.dim() == 4 and x.shape[0] > 0 else x.reshape(1, -1).std(1)
        return cls(tuple(x.shape), float(x.min()), float(x.max()), float(x.mean()), float(x.std()), float(per_image.min()))


@dataclass
class SegmentationOutputs:
    """What a segmentation model's main output holds on the probe batch."""

    channels: int
    min: float
    max: float
    channel_sum_deviation: float  # max |sum over classes - 1|: 0 when the outputs are already probabilities

    @property
    def probabilities(self) -> bool:
        return self.min >= 0.0 and self.max <= 1.0 and self.channel_sum_deviation < 1e-3


@dataclass
class Observation:
    """What the probes measured."""

    task: str
    input_hw: list[tuple[int, int]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    # pass 1
    anchors: list[hooks.AnchorRecord] = field(default_factory=list)
    gt_boxes: list[torch.Tensor] = field(default_factory=list)  # in the frame the anchors live in
    gt_labels: list[torch.Tensor] = field(default_factory=list)
    gt_in_model_frame: bool = False  # the model resized the boxes itself (its resize transform's output was read)
    matches: dict[str, list[hooks.MatchStats]] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)  # param name -> numel, requires_grad
    no_grad: list[str] = field(default_factory=list)  # trainable params left with grad None
    zero_grad: list[str] = field(default_factory=list)  # trainable params whose grad is exactly zero
    batchnorms: list[BatchNormState] = field(default_factory=list)
    autocast_plain: dict[str, bool] = field(default_factory=dict)
    train_outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # segmentation: out/aux shapes
    # pass 2
    autocast_outer: dict[str, bool] = field(default_factory=dict)
    autocast_outer_device: str = ""
    # pass 3
    features: hooks.FeatureMapRecord | None = None
    roi_calls: list[hooks.RoICall] = field(default_factory=list)
    eval_outputs: Any = None
    head_classes: dict[str, tuple[str, int]] = field(default_factory=dict)  # head -> (role, measured class count)
    failures: dict[str, str] = field(default_factory=dict)  # pass name -> "Type: message"
    errors: dict[str, BaseException] = field(default_factory=dict)  # pass name -> the exception it raised
    first_input: InputStats | None = None
    seg_outputs: SegmentationOutputs | None = None
    seg_main_output: torch.Tensor | None = None  # the main output of the training forward (detached)
    priors: Priors | None = None
    assignment: AssignmentResponse | None = None
    void: VoidResponse | None = None

    def require(self, *passes: str) -> None:
        """Raise when a pass a check depends on failed (the failure itself is a finding of its own)."""
        for p in passes:
            if p in self.failures:
                raise ProbePassFailed(f"probe pass '{p}' failed: {self.failures[p]}")


class ProbePassFailed(RuntimeError):
    """A check needed a probe pass that raised; the pass's own finding explains why."""


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(images: Any, targets: Any, device: torch.device) -> tuple[Any, Any]:
    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return move(images), move(targets)


def frozen_owners(model: nn.Module) -> dict[str, str]:
    """module name -> name of the largest enclosing module whose parameters are all frozen (and that has some)."""
    status: dict[str, bool] = {}
    for name, m in model.named_modules():
        params = list(m.parameters())
        status[name] = bool(params) and not any(p.requires_grad for p in params)
    owners: dict[str, str] = {}
    for name, _ in model.named_modules():
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            if status.get(prefix):
                owners[name] = prefix
                break
    return owners


def _bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _failed(obs: Observation, name: str, exc: BaseException) -> None:
    obs.failures[name] = f"{type(exc).__name__}: {exc}"
    obs.errors[name] = exc


def run_probes(model: nn.Module, io: ModelIO, images: Sequence[torch.Tensor] | torch.Tensor, targets: Any,
               experiments: bool = True, void_value: int | None = None) -> Observation:
    """Measure the model on one small batch; the model's state is restored afterwards. `void_value`: the
    dataset's void label in the masks (segmentation), for the void experiment."""
    obs = Observation(task=io.task)
    device = model_device(model)
    images, targets = to_device(images, targets, device)
    obs.input_hw = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    obs.trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    with hooks.preserved_state(model):
        _train_pass(model, io, images, targets, obs)
        _autocast_pass(model, io, images, targets, obs, device)
        _eval_pass(model, io, images, obs)
        if experiments:
            _experiments(model, io, images, targets, obs, void_value)
    return obs


def _experiments(model: nn.Module, io: ModelIO, images: Any, targets: Any, obs: Observation, void_value: int | None) -> None:
    if io.task == "detection":
        if "eval" not in obs.failures:
            try:
                obs.priors = discover_priors(model, io.predict, images)
            except Exception as exc:  # noqa: BLE001
                _failed(obs, "priors", exc)
        if "train" not in obs.failures:
            try:
                obs.assignment = assignment_response(model, io, list(images), list(targets))
            except Exception as exc:  # noqa: BLE001
                _failed(obs, "assignment", exc)
    elif void_value is not None:
        try:
            obs.void = void_response(model, io, images, targets, void_value)
        except Exception as exc:  # noqa: BLE001
            _failed(obs, "void", exc)


def _train_pass(model: nn.Module, io: ModelIO, images: Any, targets: Any, obs: Observation) -> None:
    try:
        model.train()
        for p in model.parameters():
            p.grad = None
        bns = _bn_modules(model)
        before = {n: m.running_mean.detach().clone() for n, m in bns if getattr(m, "running_mean", None) is not None}
        transformed: dict[str, Any] = {}
        handles = []
        transform = getattr(model, "transform", None)
        if isinstance(transform, nn.Module):
            handles.append(transform.register_forward_hook(lambda _m, _a, out: transformed.setdefault("out", out)))
        root_out: dict[str, Any] = {}
        if io.task == "segmentation":
            handles.append(model.register_forward_hook(lambda _m, _a, out: root_out.setdefault("out", out)))
        first: dict[str, torch.Tensor] = {}

        def first_conv_input(_m: nn.Module, args: tuple) -> None:  # must return None: a value would replace the input
            if "x" not in first and args and isinstance(args[0], torch.Tensor):
                first["x"] = args[0].detach()

        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_pre_hook(first_conv_input))
        try:
            with hooks.record_anchors(model) as anchors, hooks.record_matches(model) as matches, \
                    hooks.record_autocast(model) as ac:
                losses = io.losses(model, images, targets)
        finally:
            for h in handles:
                h.remove()
        obs.anchors, obs.matches, obs.autocast_plain = anchors, matches, ac
        if "x" in first:
            obs.first_input = InputStats.of(first["x"])
        obs.losses = {k: float(v.detach()) for k, v in losses.items()}
        _record_ground_truth(obs, targets, transformed.get("out"))
        if "out" in root_out:
            main, aux = split_segmentation_outputs(root_out["out"])
            obs.train_outputs["out"] = tuple(main.shape)
            if aux is not None:
                obs.train_outputs["aux"] = tuple(aux.shape)
            m = main.detach().float()
            obs.seg_main_output = m
            obs.seg_outputs = SegmentationOutputs(int(m.shape[1]), float(m.min()), float(m.max()),
                                                  float((m.sum(1) - 1).abs().max()))
        owners = frozen_owners(model)
        for n, m in bns:
            changed, delta = False, 0.0
            if n in before:
                delta = float((m.running_mean.detach() - before[n]).abs().max()) if before[n].numel() else 0.0
                changed = delta > 0.0
            params = list(m.parameters(recurse=False))
            obs.batchnorms.append(BatchNormState(n, m.training, not any(p.requires_grad for p in params),
                                                 owners.get(n), changed, delta))
        total_loss(losses).backward()
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                obs.no_grad.append(name)
            elif not bool(p.grad.detach().abs().sum() > 0):
                obs.zero_grad.append(name)
    except Exception as exc:  # noqa: BLE001
        _failed(obs, "train", exc)


def _record_ground_truth(obs: Observation, targets: Any, transformed: Any) -> None:
    if obs.task != "detection":
        return
    def read(tgt: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([torch.as_tensor(t["boxes"]).detach().float().reshape(-1, 4).cpu() for t in tgt],
                [torch.as_tensor(t["labels"]).detach().cpu() for t in tgt])

    if isinstance(transformed, tuple) and len(transformed) == 2 and transformed[1] is not None:
        try:  # torchvision GeneralizedRCNNTransform: (ImageList, resized targets), the frame the anchors live in
            obs.gt_boxes, obs.gt_labels = read(transformed[1])
            obs.gt_in_model_frame = True
            return
        except (TypeError, KeyError, IndexError):  # a user's `transform` attribute of another kind
            pass
    obs.gt_boxes, obs.gt_labels = read(targets)


def _autocast_pass(model: nn.Module, io: ModelIO, images: Any, targets: Any, obs: Observation, device: torch.device) -> None:
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    obs.autocast_outer_device = f"{device.type}/{str(dtype).replace('torch.', '')}"
    try:
        model.train()
        with torch.no_grad(), hooks.record_autocast(model) as ac, torch.autocast(device.type, dtype=dtype):
            io.losses(model, images, targets)
        obs.autocast_outer = ac
    except Exception as exc:  # noqa: BLE001
        _failed(obs, "autocast", exc)


def _eval_pass(model: nn.Module, io: ModelIO, images: Any, obs: Observation) -> None:
    try:
        model.eval()
        heads = introspect.classification_heads(model)
        with torch.no_grad(), hooks.record_feature_maps(model) as feats, hooks.record_roi_calls() as rois, \
                hooks.capture_outputs([(h.name, h.module) for h in heads]) as head_out:
            obs.eval_outputs = hooks.detach_tree(io.predict(model, images))
        obs.features, obs.roi_calls = feats, list(rois)
        for h in heads:
            count = h.classes_of(head_out.get(h.name))
            if count is not None:
                obs.head_classes[h.name] = (h.role, count)
    except Exception as exc:  # noqa: BLE001
        _failed(obs, "eval", exc)
