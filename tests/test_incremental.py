"""Class-incremental phases: the plan and its data, per-phase metrics on a hand-made case,
forgetting, the distillation loss, gradual unfreezing, and one tiny end-to-end run."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from visiondoctor.config import TrainConfig, load_config
from visiondoctor.data.formats import load_detection
from visiondoctor.data.samples import DataError
from visiondoctor.data.synth.sketches import generate_sketches
from visiondoctor.engine.trainer import Trainer
from visiondoctor.incremental.distill import RoIDistillation
from visiondoctor.incremental.metrics import forgetting, phase_metrics
from visiondoctor.incremental.phases import (load_phases, phase_training_index, restrict, seen_category_map,
                                             select_exemplars)
from visiondoctor.incremental.unfreeze import GradualUnfreezing
from visiondoctor.models.two_stage import grow_predictor, two_stage_rcnn

CLASSES = ("circle", "square", "triangle", "star", "house", "tree")
SMALL = dict(classes=CLASSES, phase_sizes=(4, 2), instances_per_class=(4, 3), num_val=2, num_test=4)


@pytest.fixture(scope="module")
def sketches(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sk")
    generate_sketches(out, seed=5, **SMALL)
    return out


# ----- the plan and its data --------------------------------------------------------------------------------------

def test_phases_file_errors_name_the_file_and_phase(tmp_path):
    bad = tmp_path / "phases.json"
    bad.write_text(json.dumps({"phases": [{"category_ids": [1, 2]}, {"category_ids": [2, 9]}]}))
    with pytest.raises(DataError) as err:
        load_phases(bad, categories=[1, 2, 3])
    text = str(err.value)
    assert str(bad) in text and "phase 1" in text and "already taught in phase 0" in text and "9" in text
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_phases(bad)


def test_phase_data_labels_and_exemplars(sketches):
    train = load_detection(sketches, "auto", "train")
    phases = load_phases(sketches / "phases.json", [c.id for c in train.categories])
    assert [p.category_ids for p in phases] == [(1, 2, 3, 4), (5, 6)]
    first, later = seen_category_map(train, phases, 0), seen_category_map(train, phases, 1)
    assert [first.to_label(c) for c in (1, 2, 3, 4)] == [later.to_label(c) for c in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert later.num_classes == 7
    index, outside = phase_training_index(train, phases[1])
    assert outside == 0 and {c for r in index.records for c in r.category_ids} == {5, 6}
    # a plan without image ids: every image holding a phase class, other classes' boxes removed and counted
    mixed = load_detection(sketches, "auto", "test")
    kept, removed = restrict(mixed, [5, 6])
    total = sum(len(r.category_ids) for r in mixed.records)
    assert removed == total - sum(len(r.category_ids) for r in kept.records) and removed > 0
    memory = select_exemplars(phase_training_index(train, phases[0])[0], [1, 2, 3, 4], per_class=2, seed=0)
    assert memory == select_exemplars(phase_training_index(train, phases[0])[0], [1, 2, 3, 4], per_class=2, seed=0)
    held = {c: sum(c in r.category_ids for r in train.records if r.image_id in memory) for c in (1, 2, 3, 4)}
    assert all(n >= 2 for n in held.values()) and len(memory) <= 8


# ----- metrics ----------------------------------------------------------------------------------------------------

def _gt() -> dict:
    boxes = {1: [10, 10, 20, 20], 2: [50, 50, 30, 20], 3: [5, 60, 25, 25]}
    anns = [{"id": i, "image_id": image, "category_id": c, "bbox": boxes[c], "area": 400, "iscrowd": 0}
            for i, (image, c) in enumerate([(1, 1), (1, 2), (2, 1), (2, 3)], start=1)]
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "annotations": anns, "categories": [{"id": c, "name": n} for c, n in ((1, "a"), (2, "b"), (3, "c"))]}


def test_phase_metrics_on_a_hand_made_case():
    gt = _gt()
    # class a found in both images, class b missed (a wrong box), class c found
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"] if a["category_id"] != 2]
    preds.append({"image_id": 1, "category_id": 2, "bbox": [0, 80, 10, 10], "score": 0.9})
    m = phase_metrics(gt, preds, old_ids=[1, 2], new_ids=[3])
    assert m["old"]["map50"] == pytest.approx(0.5)  # a: 1.0, b: 0.0
    assert m["new"]["map50"] == pytest.approx(1.0)
    assert m["all"]["map50"] == pytest.approx(2 / 3)
    assert set(m["old"]["per_class"]) == {"a", "b"} and set(m["new"]["per_class"]) == {"c"}
    first = phase_metrics(gt, preds, old_ids=[], new_ids=[1, 2])
    assert first["old"] is None and first["all"]["map50"] == pytest.approx(0.5)


def test_forgetting_is_the_fall_since_the_teaching_phase():
    history = [{"a": 1.0, "b": 0.8}, {"a": 0.5, "b": 0.8, "c": 0.9}, {"a": 0.4, "b": None, "c": 0.3}]
    taught = {"a": 0, "b": 0, "c": 1}
    assert forgetting(history, taught, 0)["mean"] is None
    assert forgetting(history, taught, 1) == {"mean": pytest.approx(0.25), "per_class": {"a": 0.5, "b": 0.0}}
    later = forgetting(history, taught, 2)  # b has no ground truth there: left out, not counted as 0
    assert later["per_class"] == {"a": pytest.approx(0.6), "c": pytest.approx(0.6)}


# ----- distillation and unfreezing --------------------------------------------------------------------------------

def _tiny_batch(n: int = 2):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 50, 60], [70, 70, 110, 100]]), "labels": torch.tensor([1, 4])}
               for _ in range(n)]
    return images, targets


def test_distillation_is_zero_against_itself_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = two_stage_rcnn(num_classes=4).eval()
    student = grow_predictor(copy.deepcopy(teacher), 6)
    student.train()
    for m in student.modules():  # BatchNorm on running statistics, as the teacher's: the same features
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    loss_fn = RoIDistillation(teacher, old_outputs=4)
    images, targets = _tiny_batch()
    losses = loss_fn(student, images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_distill"} == set(losses)
    assert float(losses["loss_distill"].detach()) == pytest.approx(0.0, abs=1e-5)  # same weights on the old columns
    with torch.no_grad():
        student.roi_heads.box_predictor.cls_score.weight[1:4] += 0.5 * torch.randn(3, 256)
    losses = loss_fn(student, images, targets)
    assert float(losses["loss_distill"].detach()) > 1e-3
    losses["loss_distill"].backward()
    assert student.roi_heads.box_predictor.cls_score.weight.grad[1:4].abs().sum() > 0
    assert student.roi_heads.box_predictor.cls_score.weight.grad[4:].abs().sum() == 0  # new classes: no teacher
    assert all(p.grad is None for p in teacher.parameters())


def test_gradual_unfreezing_releases_stages_on_schedule_and_keeps_frozen_ones_fixed():
    torch.manual_seed(0)
    model = two_stage_rcnn(num_classes=3)
    stem = {k: v.clone() for k, v in model.backbone.body.bn1.state_dict().items()}
    layer2 = model.backbone.body.layer2[0].conv1.weight.detach().clone()
    images, targets = _tiny_batch(4)
    data = list(zip(images, [{**t, "labels": t["labels"].clamp(max=2)} for t in targets]))
    callback = GradualUnfreezing(model, {"stem": None, "layer2": 1})
    cfg = TrainConfig(epochs=2, batch_size=2, optimizer="adamw", lr=1e-3, warmup_steps=0, device="cpu", amp="off")
    trainer = Trainer(model, data, cfg, collate_fn=lambda b: tuple(map(list, zip(*b))), callbacks=[callback])
    trainer.fit()
    assert callback.frozen == {"stem"}
    after = model.backbone.body.bn1.state_dict()
    assert all(torch.equal(stem[k], after[k]) for k in stem)  # frozen: weights and running statistics unchanged
    assert not torch.equal(layer2, model.backbone.body.layer2[0].conv1.weight)  # released at epoch 1, then trained
    assert [row.get("frozen_stages") for row in trainer.history if row["split"] == "train"] == [2.0, 1.0]


# ----- end to end -------------------------------------------------------------------------------------------------

def test_run_phases_end_to_end_writes_results_and_report(tmp_path, sketches):
    from visiondoctor.incremental.report_sections import incremental_section
    from visiondoctor.incremental.task import IncrementalOptions, run_phases
    from visiondoctor.rundir import RunDir

    cfg = load_config(None, ["name=inc", f"output_dir={tmp_path}", f"data.path={sketches}", "model.name=two_stage_rcnn",
                             "model.pretrained=false", "model.pretrained_backbone=false", "model.image_size=128", "train.epochs=1", "train.batch_size=4", "train.optimizer=adamw",
                             "train.lr=0.001", "train.warmup_steps=1", "train.device=cpu", "train.monitors=false",
                             "eval.split=test"])
    results = run_phases(cfg, None, "replay+distill", IncrementalOptions(phase_steps=2, memory_per_class=1, report=False))
    run = tmp_path / "inc"
    written = json.loads((run / "phases.json").read_text())
    assert written == json.loads(json.dumps(results))
    first, second = written["phases"]
    assert first["old_classes"] == [] and first["map50"]["old"] is None and "anchors" in first
    assert second["old_classes"] == list(CLASSES[:4]) and second["train"]["memory_images"] >= 1
    assert second["train"]["distill"] is True and second["train"]["steps"] >= 2
    assert set(written["final"]) >= {"map50_all", "forgetting_ap50"}
    assert (run / "metrics.json").exists() and (run / "phase_1" / "history.csv").exists()
    section = incremental_section(RunDir(run))  # what report.html shows (the whole report is tested elsewhere)
    assert section is not None and section.figures and section.figures[0].png.startswith(b"\x89PNG")
    table = next(b for b in section.blocks if getattr(b, "kind", "") == "table")
    assert [row[0] for row in table.rows] == [0, 1]
