"""Early-exit SSDLite: valid detections at every exit, per-exit losses reaching every head, batched
routing equal to one-by-one routing, calibration meeting its budget on a held-out split, and the
doctor catching the seed's degenerate threshold."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visiondoctor.evaluation import early_exit as policy
from visiondoctor.models.registry import create_model

SIZE = 64
NUM_CLASSES = 3  # background + 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE, detections_per_img=10)


def _images(n: int, seed: int = 0, h: int = 48, w: int = 80) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def _targets(n: int) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 60.0, 30.0]]),
             "labels": torch.tensor([1, 2])} for _ in range(n)]


def _input_dependent(model) -> None:
    """He-initialised convolutions, so that confidences differ between images (with SSDLite's own
    small initialisation the features, hence an untrained head's confidence, are the same for every image)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)


def test_exit_specs_measured_by_probe(model):
    specs = model.exit_specs
    assert [s["name"] for s in specs] == ["exit1", "exit2", "full"]
    assert specs[0]["channels"][0] == 80 and specs[1]["channels"][0] == 112  # features[8], features[12]
    assert specs[0]["strides"][0] == 16 and specs[1]["strides"][0] == 16
    for s in specs:  # one default-box set per feature map of that exit
        assert len(s["anchors_per_location"]) == len(s["sizes"]) == len(s["channels"])
        assert s["num_anchors"] == sum(a * h * w for a, (h, w) in zip(s["anchors_per_location"], s["sizes"]))


def test_exit_points_are_configurable():
    m = create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE, exit_points=(4,),
                     exit_extra_channels=(64,))
    assert m.exit_names == ["exit1", "full"]
    spec = m.exit_specs[0]
    assert spec["channels"] == [40, 64] and spec["strides"] == [8, 16]  # features[4]: 40 channels, stride 8
    m.eval()
    assert int(m.detect(_images(1), forced_exit=0)[0]["exit"]) == 0
    with pytest.raises(ValueError, match="exit_points"):
        create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE, exit_points=(12, 8))


def test_every_exit_gives_valid_detections(model):
    model.eval()
    images = _images(3)
    for k in range(model.num_exits):
        for det in model.detect(images, forced_exit=k):
            assert int(det["exit"]) == k and len(det["exit_confidences"]) == k + 1
            boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
            assert len(boxes) > 0
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all()  # the input's own size
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            assert ((scores >= 0) & (scores <= 1)).all()
            assert ((labels >= 1) & (labels < NUM_CLASSES)).all()
            assert 0.0 <= float(det["exit_confidence"]) <= 1.0
    with pytest.raises(ValueError, match="forced_exit"):
        model.detect(images, forced_exit=3)


def test_uncalibrated_model_is_the_full_model(model):
    model.eval()
    images = _images(2, seed=3)
    ours, reference = model(images), model.full(images)
    for a, b in zip(ours, reference):
        assert int(a["exit"]) == 2
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_losses_per_exit_reach_every_head():
    torch.manual_seed(0)
    m = create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE, exit_loss_weights=(0.5, 1, 1))
    m.train()
    losses = m(_images(2), _targets(2))
    assert set(losses) == {f"{e}_{p}" for e in ("exit1", "exit2", "full") for p in ("classification", "bbox_regression")}
    sum(losses.values()).backward()
    for name, module in (("exit1", m.exits[0]), ("exit2", m.exits[1]), ("full", m.full.head)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert m.trunk[0][0].weight.grad is not None  # the shared trunk learns from every exit

    # The weight scales the exit's losses: same batch, same weights, exit1 weighted 0.5 vs 1.
    m2 = create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE)
    m2.load_state_dict(m.state_dict())
    m2.train()
    with torch.no_grad():
        a = m2(_images(2), _targets(2))["exit1_classification"]
        m2.exit_loss_weights = [0.5, 1.0, 1.0]
        b = m2(_images(2), _targets(2))["exit1_classification"]
    assert float(b) == pytest.approx(0.5 * float(a), rel=1e-3)


def test_freeze_trunk_trains_the_exits_alone():
    torch.manual_seed(0)
    m = create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE, freeze_trunk=True)
    m.train()
    bn = next(mod for mod in m.trunk.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert not m.full.training and m.exits[0].training
    losses = m(_images(2), _targets(2))
    assert all(not name.startswith("full_") for name in losses)
    sum(losses.values()).backward()
    assert torch.equal(bn.running_mean, before)  # frozen BatchNorm is really frozen (eval mode)
    assert all(p.grad is None for p in m.full.parameters())
    assert all(p.grad is not None for p in m.exits.parameters())


def test_batched_routing_matches_one_by_one(model):
    _input_dependent(model)
    model.eval()
    images = _images(6, seed=5)
    conf = np.array([[float(c) for c in d["exit_confidences"]] for d in model.detect(images, forced_exit=2)])
    thresholds = [float(np.median(conf[:, 0])), float(np.median(conf[:, 1]))]
    batched = model.detect(images, thresholds=thresholds)
    exits = [int(d["exit"]) for d in batched]
    assert len(set(exits)) >= 2  # images left at different exits within one batch
    assert exits == policy.assign_exits(conf, thresholds).tolist()
    for image, det in zip(images, batched):
        alone = model.detect([image], thresholds=thresholds)[0]
        assert int(alone["exit"]) == int(det["exit"])
        assert torch.allclose(alone["boxes"], det["boxes"], atol=1e-4)
        assert torch.allclose(alone["scores"], det["scores"], atol=1e-5)


def test_onnx_backend_matches_eager(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from visiondoctor.early_exit.latency import OnnxExitBackend

    model.eval()
    backend = OnnxExitBackend(model, SIZE, tmp_path)
    images = _images(2, seed=7)
    for k in range(model.num_exits):
        for a, b in zip(model.detect(images, forced_exit=k), model.detect(images, forced_exit=k, backend=backend)):
            assert torch.allclose(a["scores"], b["scores"], atol=1e-4)
            assert torch.allclose(a["boxes"], b["boxes"], atol=1e-2)


# ----- calibration on synthetic per-exit records -----------------------------------------------------------
BLUR = (3.0, 1.5, 0.3)  # box jitter (px) of exit1, exit2, full on the hardest image


def synthetic_records(n: int, seed: int) -> policy.ExitRecords:
    """Two objects per 128-px image; image difficulty d in [0, 1] makes the early exits' boxes worse
    (exit1 more than exit2; the full model stays accurate); the confidence falls with d, noisily."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    predictions: list[list[list[dict]]] = [[], [], []]
    conf = np.zeros((n, 3))
    for i in range(n):
        images.append({"id": i + 1, "width": 128, "height": 128, "file_name": f"{i}.png"})
        d = rng.uniform()
        boxes = []
        for _ in range(2):
            w, h = rng.uniform(20, 50, 2)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            c = int(rng.integers(1, 3))
            boxes.append((x, y, w, h, c))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for k, blur in enumerate(BLUR):
            jitter = 0.3 + blur * d ** 2
            predictions[k].append([{"image_id": i + 1, "category_id": c,
                                    "bbox": [x + rng.normal(0, jitter), y + rng.normal(0, jitter), w, h],
                                    "score": float(np.clip(0.95 - 0.4 * d + rng.normal(0, 0.03), 0.01, 1))}
                                   for x, y, w, h, c in boxes])
            conf[i, k] = np.clip(1 - d + rng.normal(0, 0.05), 0, 1)
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return policy.ExitRecords(gt, ["exit1", "exit2", "full"], [im["id"] for im in images], predictions,
                              {"conf": conf, "noise": rng.uniform(size=(n, 3))})


LATENCY = policy.PathCost({(k, ran): 30.0 * (k + 1) + 4.0 * sum(ran) for k, ran in policy.PathCost.paths(3)})
TOLERANCE = 0.01  # held-out AP drop may exceed the calibrated one by 1 point (sampling noise of ~150 images)


@pytest.fixture(scope="module")
def calibration():
    cal, held = synthetic_records(150, seed=0), synthetic_records(150, seed=1)
    return cal, held, policy.sweep(cal, "conf", LATENCY, levels=5)


def test_signal_choice_prefers_the_informative_signal():
    result = policy.signal_correlations(synthetic_records(60, seed=4))
    assert result["chosen"] == "conf"
    assert result["signals"]["conf"]["exit1"]["vs_gap"] > 0.3
    assert abs(result["signals"]["noise"]["mean_vs_gap"]) < 0.25


def test_calibration_meets_map_budget_on_held_out_split(calibration):
    cal, held, points = calibration
    chosen = policy.calibrate(points, max_map_drop=0.02)
    assert chosen.budget_met and chosen.map_drop <= 0.02
    assert chosen.latency_cut > 0.2  # the budget is spent on leaving early, not met by never leaving
    result = policy.evaluate_point(held, "conf", chosen.thresholds, LATENCY)
    assert result["map_drop"] <= 0.02 + TOLERANCE
    assert result["latency_cut"] > 0.1
    # A stricter budget costs speed: never faster than the looser one.
    strict = policy.calibrate(points, max_map_drop=0.0)
    assert strict.map_drop <= 0.0 + 1e-12 and strict.latency_ms >= chosen.latency_ms


def test_calibration_meets_latency_budget(calibration):
    cal, held, points = calibration
    full_ms = LATENCY.cost(2, [math.inf, math.inf])
    chosen = policy.calibrate(points, target_latency_ms=0.6 * full_ms)
    assert chosen.budget_met and chosen.latency_ms <= 0.6 * full_ms
    result = policy.evaluate_point(held, "conf", chosen.thresholds, LATENCY)
    assert result["latency_ms"] <= 0.6 * full_ms * 1.1  # same policy, another split: within 10%
    impossible = policy.calibrate(points, target_latency_ms=1.0)
    assert not impossible.budget_met and impossible.latency_ms == min(p.latency_ms for p in points)


def test_pareto_front_is_monotone(calibration):
    _, _, points = calibration
    front = policy.pareto_front(points)
    assert all(a.latency_ms <= b.latency_ms and a.map < b.map for a, b in zip(front, front[1:]))
    assert all(not any(q.latency_ms < p.latency_ms and q.map > p.map for q in points) for p in front)


# ----- the doctor on the seed's failure ------------------------------------------------------------------
def test_degenerate_threshold_is_caught_by_the_doctor():
    """The seed: an untrained head outputs the same confidence for every image, the threshold sits
    below it, every image leaves at exit 1."""
    from visiondoctor.early_exit.analysis import degenerate_findings

    torch.manual_seed(0)
    m = create_model("ssdlite320_early_exit", num_classes=NUM_CLASSES, image_size=SIZE).eval()
    dets = m.detect(_images(8, seed=9), forced_exit=2)
    conf = np.array([[float(c) for c in d["exit_confidences"]] for d in dets])
    assert np.ptp(conf[:, 0]) < 1e-3  # constant, as in the seed
    threshold = float(conf[0, 0]) - 0.02
    routed = m.detect(_images(8, seed=9), thresholds=[threshold, math.inf])
    statistics = {"exit_indices": [int(d["exit"]) for d in routed],
                  "exit_confidences": [d["exit_confidences"].tolist() for d in routed],
                  "thresholds": [threshold, None], "num_exits": 3}
    assert set(statistics["exit_indices"]) == {0}
    findings = degenerate_findings(statistics)
    assert [f["id"] for f in findings] == ["early-exit.degenerate"] and findings[0]["severity"] == "error"

    # A calibrated policy on informative confidences is not flagged.
    cal = synthetic_records(60, seed=2)
    thresholds = [float(np.quantile(cal.signals["conf"][:, 0], 0.6)), float(np.quantile(cal.signals["conf"][:, 1], 0.5))]
    from visiondoctor.early_exit.analysis import exit_statistics

    assert degenerate_findings(exit_statistics(cal, "conf", thresholds, "val")) == []


# ----- the analysis end to end on a tiny run --------------------------------------------------------------
def _tiny_early_exit_run(tmp_path):
    """A run directory holding an untrained (but input-dependent) early-exit model on 8+6 shapes."""

    from visiondoctor.config import config_from_dict, save_config
    from visiondoctor.data.formats import load_detection
    from visiondoctor.data.samples import CategoryMap
    from visiondoctor.data.synth.shapes import generate_shapes
    from visiondoctor.engine.checkpoint import save_checkpoint
    from visiondoctor.rundir import RunDir

    data = tmp_path / "data"
    generate_shapes(data, num_train=2, num_val=8, num_test=6, image_size=SIZE, min_size=8, max_size=30, seed=0)
    cfg = config_from_dict({"name": "ee", "output_dir": str(tmp_path), "data": {"path": str(data)},
                            "model": {"name": "ssdlite320_early_exit", "image_size": SIZE,
                                      "kwargs": {"detections_per_img": 10}}, "train": {"batch_size": 4}})
    run = RunDir.create(cfg.run_path)
    save_config(cfg, run.config)
    category_map = CategoryMap.from_categories(load_detection(data, "auto", "train").categories, True)
    run.write_json("categories.json", category_map.to_dict())
    m = create_model("ssdlite320_early_exit", num_classes=category_map.num_classes, image_size=SIZE,
                     detections_per_img=10)
    _input_dependent(m)
    save_checkpoint(run.checkpoints, 1, {"model": m.state_dict(), "step": 1})

    return run, m


def test_calibrate_and_analyse_writes_results_and_report(tmp_path):
    import json

    from visiondoctor.early_exit.analysis import apply_policy, calibrate_and_analyse

    run, m = _tiny_early_exit_run(tmp_path)
    result = calibrate_and_analyse(run.path, max_map_drop=0.05, levels=3, latency_images=2, onnx=False, gallery=2)
    saved = json.loads((run.path / "early_exit.json").read_text())  # strict JSON: no Infinity
    assert saved["policy"] == result["policy"] and saved["held_out_split"] == "test"
    assert len(saved["forced_exit"]["val"]) == len(saved["forced_exit"]["test"]) == 3
    assert saved["operating_point"]["budget_met"] and saved["operating_point"]["map_drop"] <= 0.05
    assert len(saved["exit_statistics"]["exit_indices"]) == 8
    assert {"full", "early_exit"} <= set(saved["latency"]["pytorch"]["measured"])
    assert saved["latency"]["onnxruntime"] == {"skipped": "disabled"}
    assert saved["gallery"] and all((run.path / g["file"]).exists() for g in saved["gallery"])
    assert (run.plots / "early_exit_gallery.png").exists()
    assert "Early exit" in run.report.read_text(encoding="utf-8")
    findings = json.loads(run.diagnosis_json.read_text())
    assert [f for f in findings if f["id"].startswith("early-exit")] == saved["findings"]
    m.set_policy([math.inf, math.inf])
    apply_policy(run, m)
    assert m.signal == saved["policy"]["signal"]
    assert [None if t == math.inf else pytest.approx(t) for t in m.thresholds] == saved["policy"]["thresholds"]


def test_eval_cli_calibrates_to_the_given_budget(tmp_path, capsys):
    import json

    from visiondoctor.cli import main

    run, _ = _tiny_early_exit_run(tmp_path)
    assert main(["eval", str(run.path), "--max-map-drop", "0.05", "--latency-images", "2"]) == 0
    saved = json.loads((run.path / "early_exit.json").read_text())
    assert saved["budget"] == {"max_map_drop": 0.05} and saved["operating_point"]["map_drop"] <= 0.05
    printed = capsys.readouterr()
    assert "held out" in printed.out + printed.err and "thresholds" in printed.out + printed.err
