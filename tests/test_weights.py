"""Pretrained weights by default, offline fallback in one log line, local weights files (tensors only)."""
from __future__ import annotations

import io
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models._api as torchvision_weights
from torchvision.models import mobilenet_v3_small

from visiondoctor.cli import _config, build_parser
from visiondoctor.config import load_config
from visiondoctor.data.samples import Category, CategoryMap
from visiondoctor.models.detection import WeightsUnavailable, load_weights_file
from visiondoctor.models.registry import create_model
from visiondoctor.tasks.detection import DetectionTask
from visiondoctor.tasks.pipeline import build_run_model

def _cfg(*overrides: str):
    return load_config(None, ["model.name=ssdlite_mobilenet_v3_small", "model.image_size=96", *overrides])


def _categories() -> dict:
    return CategoryMap.from_categories([Category(1, "a"), Category(2, "b")], background=True).to_dict()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: every torchvision weights download fails as it does on this machine."""
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", unreachable)


def test_pretrained_is_the_default_and_the_cli_turns_it_off():
    assert load_config(None).model.pretrained and load_config(None).model.pretrained_backbone
    args = build_parser().parse_args(["train", "--no-pretrained", "--weights", "w.pt"])
    cfg = _config(args)
    assert (cfg.model.pretrained, cfg.model.pretrained_backbone, cfg.model.weights) == (False, False, "w.pt")
    assert _config(build_parser().parse_args(["train", "--pretrained"])).model.pretrained_backbone


def test_offline_the_run_falls_back_to_scratch_in_one_log_line(offline, caplog):
    cfg = load_config(None, ["model.image_size=96"])  # the default model, pretrained by default
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        model, record = build_run_model(DetectionTask(), cfg, _categories(), None)
    lines = [r for r in caplog.records if r.name == "visiondoctor.models.detection"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "training from scratch" in lines[0].getMessage()
    assert record["used"] == "none" and len(record["fallback"]) == 2 and "download failed" in record["source"]
    torch.manual_seed(0)
    scratch, none_asked = build_run_model(DetectionTask(), _cfg_default_scratch(), _categories(), None)
    assert none_asked["used"] == "none" and not none_asked["fallback"]
    # the failed attempts left the random state alone: the fallback is the model asked for without weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), scratch.state_dict().values()))


def _cfg_default_scratch():
    return load_config(None, ["model.image_size=96", "model.pretrained=false", "model.pretrained_backbone=false"])


def test_without_detector_weights_the_backbone_weights_are_used(monkeypatch, caplog):
    """ssdlite_mobilenet_v3_small has no COCO weights; its ImageNet trunk does (served here from memory)."""
    served = mobilenet_v3_small().state_dict()
    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", lambda *a, **k: served)
    with caplog.at_level(logging.INFO):
        model, record = build_run_model(DetectionTask(), _cfg(), _categories(), None)
    assert record["used"] == "pretrained_backbone" and "IMAGENET1K" in record["source"]
    assert "no pretrained weights exist" in record["fallback"][0]
    assert len([r for r in caplog.records if r.name == "visiondoctor.models.detection"]) == 1
    first = model.backbone.features[0][0][0].weight
    assert torch.equal(first, served["features.0.0.weight"])


def test_an_explicit_builder_request_still_fails_clearly(offline):
    with pytest.raises(WeightsUnavailable, match="could not be loaded") as exc:
        create_model("ssdlite320_mobilenet_v3_large", num_classes=3, image_size=96, pretrained=True)
    assert not exc.value.missing


def test_a_local_weights_file_is_loaded_and_recorded(tmp_path: Path):
    torch.manual_seed(1)
    source = create_model("ssdlite_mobilenet_v3_small", num_classes=3, image_size=96)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "step": 7}, checkpoint)  # a run's checkpoint holds it under "model"
    for path in (plain, checkpoint):
        torch.manual_seed(2)
        model, record = build_run_model(DetectionTask(), _cfg(f"model.weights={path}"), _categories(), None)
        assert record["used"] == "file" and record["source"] == str(path.resolve()) and record["not_loaded"] == []
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_a_weights_file_that_does_not_fit_is_refused_naming_it(tmp_path: Path):
    other = tmp_path / "five_classes.pt"
    torch.save(create_model("ssdlite_mobilenet_v3_small", num_classes=5, image_size=96).state_dict(), other)
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=3, image_size=96)
    with pytest.raises(ValueError, match="five_classes.pt does not fit this model: 0 tensor.*of another shape"):
        load_weights_file(model, other)
    renamed = tmp_path / "renamed.pt"
    torch.save({f"x.{k}": v for k, v in model.state_dict().items()}, renamed)
    with pytest.raises(ValueError, match="tensor\\(s\\) the model does not have"):
        load_weights_file(model, renamed)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights_file(model, tmp_path / "missing.pt")


class Payload:
    """Stands for any object a malicious file could carry (its unpickling would run code)."""


def test_a_weights_file_is_never_unpickled(tmp_path: Path):
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(2), "payload": Payload()}, buffer)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="cannot be read as tensors"):
        load_weights_file(create_model("ssdlite_mobilenet_v3_small", num_classes=3, image_size=96), evil)
