"""Typed configuration: dataclasses, YAML in and out, dotted CLI overrides (`train.lr=0.01`)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from visiondoctor.presets import preset_path
from visiondoctor.rundir import write_bytes_atomic


@dataclass
class DataConfig:
    path: str = ""  # dataset root, or an annotation file
    format: str = "auto"  # auto | coco | voc | yolo | masks | streethazards
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    synth: str = ""  # when set and `path` is empty: generate this synthetic dataset (shapes, streets, sketches)
    synth_images: int = 0  # training images to generate; 0 = generator default
    synth_options: dict[str, Any] = field(default_factory=dict)  # other generator arguments (image_size, ...)
    ignore_index: int | None = None  # segmentation: the label void pixels become; None = the layout's own void value
    # Loading (visiondoctor.data.loading): training images are decoded already reduced so that their shorter
    # side is the model's input size (auto = model.image_size; off; or a side in px), optionally cached
    # (none | ram | disk: <output_dir>/_cache/images), with loader workers (auto: see data.loading.auto_workers).
    reduce: int | str = "auto"
    cache: str = "none"
    workers: int | str = "auto"


@dataclass
class ModelConfig:
    name: str = "ssdlite320_mobilenet_v3_large"
    image_size: int = 320
    # Weights: the best that exist and can be had, in this order: the whole model's (COCO), the backbone's
    # (ImageNet), none; a fallback is said in one log line and recorded in the run's weights.json.
    pretrained: bool = True  # whole-model (COCO detector) weights, where they exist
    pretrained_backbone: bool = True  # ImageNet backbone weights, where they exist
    weights: str = ""  # a local weights file (state dict or visiondoctor checkpoint), loaded tensors-only; overrides both
    auto_priors: bool = True  # measure the anchors'/default boxes' best possible recall on the data; refit below 0.98
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the builder


@dataclass
class TrainConfig:
    epochs: int = 30
    max_minutes: float = 0.0  # wall-clock budget; 0 = no limit
    # Images per step, all processes together; auto = 8 on CPU, 16 on a GPU (auto_batch_size), resolved when the
    # config is built, so runs record the number they trained with.
    batch_size: int | str = "auto"
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_steps: int = 100
    scheduler: str = "cosine"  # cosine | constant
    grad_clip: float = 10.0  # 0 = off
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "auto"  # auto (bf16/fp16 on cuda, off on cpu) | off | fp16 | bf16
    augment: str = "default"  # default | none
    early_stop_patience: int = 0  # evaluations without improvement; 0 = off
    eval_every: int = 1  # epochs
    loss_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    monitors: bool = True  # the doctor's training monitors
    tensorboard: bool = False  # event files in <run>/tensorboard (needs the tensorboard extra)
    log_every: int = 50  # steps per history "train" row (averaged); also one at every epoch end; 0 = per epoch only
    stop_on: str = "never"  # error | warning | never: stop the run when the doctor raises a finding this severe
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: int = 0  # also mid-epoch, for crash safety on long epochs; 0 = off
    channels_last: str = "auto"  # auto (on for convolutional models on CUDA and CPU) | on | off
    compile: bool = False  # torch.compile the training forward
    sync_bn: bool = False  # SyncBatchNorm under torchrun on GPUs (not supported on CPU/gloo)

    def __post_init__(self) -> None:
        if self.batch_size == "auto":
            self.batch_size = auto_batch_size(self.device)
        if not str(self.batch_size).isdigit() or int(self.batch_size) < 1:
            raise ConfigError(f"train.batch_size={self.batch_size!r}: expected a positive integer or auto")
        self.batch_size = int(self.batch_size)


def auto_batch_size(device: str) -> int:
    """`train.batch_size: auto`: 8 when training runs on the CPU, 16 on a GPU (or another accelerator).

    On the CPU a run is short of optimizer steps, and a smaller batch costs no more per image: measured on the
    2-core development CPU (forward + backward + SGD step, channels_last), SSDLite-MobileNetV3-Large at 416 px
    took 92 ms/image at batch 4 and 8, 111 at 16 and 182 at 32 (a larger batch's activations fall out of the
    caches); RetinaNet-MobileNetV3-FPN, Faster R-CNN-MobileNetV3-FPN and DeepLabV3+-ResNet18 cost the same per
    image at 8 and 16 (within 6 %). At batch 8 an image budget buys twice the steps: the default recipe on BCCD
    (210 images, 416 px, from scratch, 5 minutes) reached val mAP@.5 0.967 in 374 steps at batch 8 against
    0.42-0.85 in 191-211 steps at 16 (benchmarks/vs_ultralytics.py --datasets bccd --modes time --minutes 5).
    GPUs keep 16: larger batches are what keeps them busy (not measured here: no GPU)."""
    if device == "auto":
        import torch  # deferred: importing visiondoctor.config must not load torch (tests/test_api.py)

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 8 if device == "cpu" else 16


@dataclass
class EvalConfig:
    split: str = "val"
    max_images: int = 0  # 0 = whole split; a subset is reported as such
    score_threshold: float = 0.05  # for the metric (COCO convention: keep low scores)
    display_threshold: float = 0.5  # for drawn predictions
    max_detections: int = 100


@dataclass
class Config:
    task: str = "detection"  # detection | segmentation
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The dotted keys the user gave (a config file, flags, overrides: whatever `config_from_dict` read), so that a
    # setting a run may choose by measurement (model.image_size when the priors cannot reach the boxes) is chosen
    # only where the user left it to the defaults. Not a setting: never read from nor written to YAML.
    user_set: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False,
                                     metadata={"internal": True})

    @property
    def run_path(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                values.pop(f.name)
        return values

    def is_user_set(self, key: str) -> bool:
        """Whether the user chose the dotted `key` ("model.image_size", "model.kwargs.finest_stride"): given in the
        file or on the command line (even at its default value), inside a mapping given whole, or holding a value
        other than the default (a Config built in code)."""
        if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in self.user_set):
            return True
        return _lookup(self, key) != _lookup(Config(), key)


class ConfigError(ValueError):
    pass


_MISSING = object()


def _lookup(node: Any, key: str) -> Any:
    """The value at a dotted key through dataclasses and mappings (_MISSING where there is none)."""
    for part in key.split("."):
        if dataclasses.is_dataclass(node):
            node = getattr(node, part, _MISSING)
        elif isinstance(node, dict):
            node = node.get(part, _MISSING)
        else:
            return _MISSING
    return node


def _dotted_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys of a nested mapping's leaves ({"model": {"image_size": 1, "kwargs": {}}} ->
    {"model.image_size", "model.kwargs"}: an empty mapping is a leaf)."""
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict) and value:
            keys |= _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + str(key))
    return keys


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping, got {value!r}")
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float):
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if hint is str:
        return str(value)
    return value


def config_from_dict(values: dict[str, Any]) -> Config:
    """The Config these (nested) values set, remembering which keys they gave (Config.is_user_set)."""
    return dataclasses.replace(_build(Config, values or {}, "config"), user_set=frozenset(_dotted_keys(values or {})))


class ConfigLoader(yaml.SafeLoader):
    """YAML as configs are written: only true/false are booleans (YAML 1.2). PyYAML follows YAML 1.1, where
    on/off/yes/no are booleans too, so `channels_last: off` would reach a text field as False."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def _parse(text: Any) -> Any:
    """One YAML document, read by ConfigLoader (a SafeLoader: no Python objects are ever built)."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (optional; a bare name such as `demo` is a preset shipped with the package), then
    apply `a.b=value` overrides (values parsed as YAML scalars)."""
    values: dict[str, Any] = {}
    if path and not Path(path).exists() and not Path(path).suffix and "/" not in str(path):
        path = preset_path(str(path))
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                values = _parse(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.01")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse(raw) if raw != "" else ""
    return config_from_dict(values)


def save_config(config: Config, path: str | Path) -> None:
    write_bytes_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))
