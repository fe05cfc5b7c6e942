"""Segmentation heads done right: both heads have num_classes outputs, both get gradients,
the loss is CE(out) + w * CE(aux); the seed's broken configuration is caught by the doctor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50

from visiondoctor.models.registry import available_models, create_model
from visiondoctor.models.segmentation import head_output_channels
from visiondoctor.tasks.segmentation import SegmentationLoss, load_loss_file

K = 7
CHEAP = ["deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3plus_resnet18",
         "deeplabv3plus_resnet18_lite"]


def _batch(n: int = 2, size: int = 64, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, k, (n, size, size), generator=g)
    masks[:, :4] = 255
    return torch.randn(n, 3, size, size, generator=g), masks


def test_every_registered_segmentation_model_is_covered() -> None:
    names = set(available_models("segmentation"))
    assert set(CHEAP) <= names
    assert {"lraspp_mobilenet_v3_large", "deeplabv3plus_resnet50", "deeplabv3plus_mobilenet_v3_large"} <= names
    # same torchvision path as deeplabv3_resnet50 below; checked by construction only (it is slow to run)
    assert head_output_channels(create_model("fcn_resnet50", num_classes=K)) == {"classifier": K, "aux_classifier": K}


@pytest.mark.parametrize("name", CHEAP)
def test_both_heads_have_num_classes_outputs_and_receive_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=K).train()
    images, masks = _batch(size=48)
    out = model(images)
    assert out["out"].shape == (2, K, 48, 48) and out["aux"].shape == (2, K, 48, 48)
    losses = SegmentationLoss(ignore_index=255).from_outputs(out, masks)
    assert set(losses) == {"out", "aux"}
    (losses["out"] + 0.4 * losses["aux"]).backward()
    for head in ("classifier", "aux_classifier"):
        params = list(getattr(model, head).parameters())
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), head
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle


def test_model_without_aux_head_and_aux_loss_off() -> None:
    model = create_model("lraspp_mobilenet_v3_large", num_classes=K)
    assert set(model(_batch()[0])) == {"out"}
    with pytest.raises(ValueError, match="no auxiliary classifier"):
        create_model("lraspp_mobilenet_v3_large", num_classes=K, aux_loss=True)
    plain = create_model("deeplabv3plus_resnet18", num_classes=K, aux_loss=False)
    assert set(SegmentationLoss()(plain, *_batch())) == {"out"}


def test_loss_is_cross_entropy_of_each_head_with_ignore_index() -> None:
    images, masks = _batch()
    logits = {"out": torch.randn(2, K, 64, 64), "aux": torch.randn(2, K, 64, 64)}
    losses = SegmentationLoss(255).from_outputs(logits, masks)
    keep = masks != 255
    for key in ("out", "aux"):
        picked = logits[key].permute(0, 2, 3, 1)[keep]
        want = F.cross_entropy(picked, masks[keep])
        assert losses[key].item() == pytest.approx(want.item(), rel=1e-6)


def _seed_model() -> nn.Module:
    """The seed's Model 1: torchvision DeepLabV3-ResNet50, only classifier[-1] resized to 13 classes."""
    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    model.classifier[-1] = nn.Conv2d(256, 13, kernel_size=1)
    return model


def test_seed_configuration_refused_by_our_loss() -> None:
    images, masks = _batch(k=13)
    with pytest.raises(ValueError, match="auxiliary head outputs 21 classes but the main head 13"):
        SegmentationLoss()(_seed_model(), images, masks)


def test_doctor_flags_the_seed_configuration_and_passes_its_fix() -> None:
    from visiondoctor.doctor.static import static_checks

    images, masks = _batch(n=2, size=48, k=13)

    def seed_loss(outputs, targets):  # the seed's loop: only output['out'] in the loss
        return F.cross_entropy(outputs["out"], targets, ignore_index=255)

    findings, _ = static_checks(_seed_model(), images, masks, task="segmentation", num_classes=13, loss_fn=seed_loss)
    ids = {f.id for f in findings if f.severity in ("error", "warning")}
    assert "head.num-classes-mismatch" in ids
    assert "params.no-gradient" in ids
    aux = [f for f in findings if f.id == "head.num-classes-mismatch"]
    assert any(f.evidence.get("outputs") == 21 for f in aux)

    fixed = create_model("deeplabv3_resnet50", num_classes=13)  # our builder: both heads, both in the loss
    ours = SegmentationLoss()
    findings, _ = static_checks(fixed, images, masks, task="segmentation", num_classes=13,
                                loss_fn=lambda outputs, targets: ours.from_outputs(outputs, targets))
    bad = {f.id for f in findings if f.severity == "error"}
    assert not bad & {"head.num-classes-mismatch", "params.no-gradient"}


def test_subset_evaluation_is_flagged_by_the_doctor() -> None:
    from visiondoctor.doctor.checks.evaluation import check_sample_size
    from visiondoctor.evaluation.segmentation import ConfusionMatrix

    cm = ConfusionMatrix(3)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        cm.update(torch.randint(0, 3, (8, 8), generator=g), torch.randint(0, 3, (8, 8), generator=g))
    sampled = cm.compute(["a", "b", "c"], total_images=1000)
    found = check_sample_size(sampled)
    assert [f.id for f in found] == ["eval.sample-bias"]
    assert not check_sample_size(cm.compute(["a", "b", "c"], total_images=10))


def test_user_loss_file(tmp_path: Path) -> None:
    path = tmp_path / "myloss.py"
    path.write_text("import torch.nn.functional as F\n"
                    "def dice_ce(outputs, targets):\n"
                    "    return {'ce': F.cross_entropy(outputs['out'], targets, ignore_index=255)}\n")
    loss = load_loss_file(f"{path}:dice_ce")
    model = create_model("deeplabv3plus_resnet18_lite", num_classes=K)
    assert set(loss(model, *_batch())) == {"ce"}
    with pytest.raises(ValueError, match="no callable 'nope'"):
        load_loss_file(f"{path}:nope")
    with pytest.raises(ValueError, match="path.py:function"):
        load_loss_file("nocolon")


@pytest.mark.parametrize("name,kwargs", [("deeplabv3_mobilenet_v3_large", {"pretrained": True}),
                                         ("lraspp_mobilenet_v3_large", {"pretrained_backbone": True}),
                                         ("deeplabv3plus_mobilenet_v3_small", {"pretrained_backbone": True})])
def test_weights_that_cannot_be_downloaded_give_a_clear_message(name: str, kwargs: dict,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as api

    from visiondoctor.models.detection import WeightsUnavailable

    def offline(*args, **kw):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="pretrained_backbone=false"):
        create_model(name, num_classes=K, **kwargs)
