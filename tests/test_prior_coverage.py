"""When no fit of the priors reaches the boxes (objects small against the finest stride, as in large images shrunk
to the default input): the input searched by measurement (a finer level, a larger model.image_size), the user's
own settings kept, the choice recorded in priors.json, config.yaml and the report; the doctor's anchors.coverage
and the fit's best possible recall one computation."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from visiondoctor.config import Config, ModelConfig, load_config
from visiondoctor.data.formats import load_detection
from visiondoctor.data.synth.shapes import generate_shapes
from visiondoctor.doctor.checks.anchors import check_anchor_coverage
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.priors import discover_priors
from visiondoctor.doctor.probe import run_probes
from visiondoctor.models.anchor_fit import (
    COVERAGE_TARGET,
    best_possible_recall,
    boxes_in_model_frame,
    find_prior_generators,
    finer_level_kwargs,
    fit_model_priors,
    generate_priors,
    larger_input_sizes,
    measure_prior_grids,
    prior_params,
)
from visiondoctor.models.registry import create_model, get_entry
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.export import script_model
from visiondoctor.tasks.pipeline import (
    load_run_model,
    prepare_model,
    prepare_priors,
    rebuild_run_model,
    task_for,
    train,
)

DEFAULT_MODEL = ModelConfig().name
OFFLINE = ["model.pretrained=false", "model.pretrained_backbone=false"]
# Images 400 px wide with objects 7.5-15 % of the width (30-60 px; 24-48 px at the default 320 px input): the
# stride-16 level's default boxes (at least 4 strides, 64 px) miss most of them, a stride-8 level's reach them.
LARGE_REGIME = {"image_size": 400, "min_size": 30, "max_size": 60, "small_size": 30, "small_fraction": 0.0}


# ----- telling the user's settings from the defaults ------------------------------------------------------------

def test_the_config_knows_which_settings_the_user_gave(tmp_path):
    cfg = load_config(None, ["model.kwargs={finest_stride: 16}", "train.epochs=2"])
    assert cfg.is_user_set("model.kwargs.finest_stride") and cfg.is_user_set("train.epochs")
    assert not cfg.is_user_set("model.image_size")
    assert load_config(None, ["model.image_size=320"]).is_user_set("model.image_size")  # even at the default value
    (tmp_path / "c.yaml").write_text("model: {image_size: 320}\n")
    assert load_config(tmp_path / "c.yaml").is_user_set("model.image_size")
    assert Config(model=ModelConfig(image_size=160)).is_user_set("model.image_size")  # built in code
    assert not Config().is_user_set("model.image_size") and "user_set" not in Config().to_dict()


# ----- the options ----------------------------------------------------------------------------------------------

def test_larger_inputs_stop_at_the_images_own_size_and_finer_levels_come_from_the_builder():
    assert larger_input_sizes(320, 1600) == [384, 512, 640, 768, 992, 1216, 1536, 1600]
    assert larger_input_sizes(320, 400) == [384]
    assert larger_input_sizes(320, 320) == []
    assert finer_level_kwargs(get_entry(DEFAULT_MODEL).builder, {}) == [{"finest_stride": 8}]
    assert finer_level_kwargs(get_entry(DEFAULT_MODEL).builder, {"finest_stride": 8}) == [{"finest_stride": 4}]
    assert finer_level_kwargs(get_entry("retinanet_resnet50_fpn").builder, {}) == []


# ----- one measure ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def large_regime(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("regime") / "shapes"
    generate_shapes(root, num_train=8, num_val=0, num_test=0, **LARGE_REGIME)
    return load_detection(root, "auto", "train").records


@pytest.mark.parametrize("kwargs", [{}, {"finest_stride": 8}])
def test_the_doctor_and_the_fit_report_the_same_coverage_on_the_same_boxes(large_regime, kwargs):
    """anchors.coverage (priors found in the forward, probe batch's boxes) and the fit's best possible recall
    (priors from the generator on the measured grid, the records' boxes) agree exactly on the same images."""
    torch.manual_seed(0)
    model = create_model(DEFAULT_MODEL, num_classes=6, image_size=320, **kwargs)
    fit_model_priors(model, large_regime, 320)
    images = [pil_to_tensor(Image.open(r.path).convert("RGB")).float() / 255 for r in large_regime]
    targets = [{"boxes": torch.tensor(r.boxes), "labels": torch.ones(len(r.boxes), dtype=torch.int64)}
               for r in large_regime]
    obs = run_probes(model, ModelIO("detection"), images, targets, experiments=False)
    obs.priors = discover_priors(model, ModelIO("detection").predict, images)
    finding, = check_anchor_coverage(obs)
    (names, generator), = find_prior_generators(model)
    priors = generate_priors(generator, measure_prior_grids(model, 320)[names[0]])
    fit_bpr = best_possible_recall(priors, boxes_in_model_frame(model, large_regime))
    assert finding.evidence["best_possible_recall_iou_0.5"] == round(fit_bpr, 3)
    assert finding.evidence["num_boxes"] == sum(len(r.boxes) for r in large_regime)


# ----- the default recipe, end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> RunDir:
    """The default `train` (default model and input size) on large-regime images, one short epoch."""
    out = tmp_path_factory.mktemp("runs")
    options = json.dumps({"num_val": 2, "num_test": 1, **LARGE_REGIME})
    cfg = load_config(None, ["data.synth=shapes", "data.synth_images=8", f"data.synth_options={options}",
                             "train.epochs=1", "train.batch_size=4", "train.monitors=false", *OFFLINE,
                             f"output_dir={out}", "name=default"])
    return train(task_for(cfg), cfg)


def test_the_default_recipe_changes_the_input_until_the_priors_reach_the_boxes(default_run):
    priors = default_run.read_json("priors.json")
    searched = priors["input"]
    assert searched["start"]["bpr"] < COVERAGE_TARGET <= priors["bpr_after"]  # the fit alone fell short
    chosen = searched["chosen"]
    assert chosen is searched["tried"][-1] or chosen == searched["tried"][-1]  # the first (cheapest) that reached it
    assert [t["relative_cost"] for t in searched["tried"]] == sorted(t["relative_cost"] for t in searched["tried"])
    assert all(t["bpr"] < COVERAGE_TARGET for t in searched["tried"][:-1])
    assert chosen["bpr"] == priors["bpr_after"] and "input changed" in searched["note"]

    cfg = load_config(default_run.config)  # the model the run trained, as later commands rebuild it
    assert (cfg.model.image_size, cfg.model.kwargs) == (chosen["image_size"], chosen["kwargs"])
    model, _, _ = load_run_model(default_run, torch.device("cpu"))
    assert prior_params(model.anchor_generator) == priors["generators"][0]["after"]

    coverage = next(f for f in default_run.read_json("diagnosis.json") if f["id"] == "anchors.coverage")
    assert coverage["evidence"]["best_possible_recall_iou_0.5"] >= COVERAGE_TARGET  # the first step's measure
    report = (default_run.path / "report.html").read_text()
    assert "input changed so the priors reach the boxes" in report and "anchors.coverage" in report


def test_a_resumed_run_rebuilds_the_input_priors_json_records(default_run):
    cfg = load_config(default_run.config, ["model.image_size=320", "model.kwargs={}"])  # as the user typed it
    task = task_for(cfg)
    data = task.load_data(cfg)
    resumed, model, _, priors = prepare_model(task, cfg, data, data.categories(), default_run, resume=True)
    chosen = default_run.read_json("priors.json")["input"]["chosen"]
    assert (resumed.model.image_size, resumed.model.kwargs) == (chosen["image_size"], chosen["kwargs"])
    assert prior_params(model.anchor_generator) == priors["generators"][0]["after"]


# ----- the user's settings --------------------------------------------------------------------------------------

class _Record(SimpleNamespace):
    """A training record with boxes only: the prior fit reads sizes and boxes, never pixels."""


def _photo_records(n: int = 12, seed: int = 0) -> list[_Record]:
    """1600 x 1200 photos with objects 3-15 % of the width."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n):
        side = 48 + torch.rand(4, generator=g) * 192
        xy = torch.rand(4, 2, generator=g) * torch.tensor([1600.0, 1200.0]) * 0.8
        boxes = torch.cat([xy, xy + torch.stack([side, side * (0.8 + 0.4 * torch.rand(4, generator=g))], 1)], 1)
        records.append(_Record(width=1600, height=1200, boxes=boxes.tolist(), iscrowd=[]))
    return records


def _priors_for(overrides: list[str]) -> tuple[dict, Config]:
    cfg = load_config(None, [*OFFLINE, *overrides])
    task = task_for(cfg)
    categories = {"names": ["a", "b"], "dataset_ids": [1, 2], "background": True}
    model = task.build_model(cfg, categories, None)
    data = SimpleNamespace(split=lambda name: SimpleNamespace(records=_photo_records()))
    return prepare_priors(task, model, data, cfg, None, categories), cfg


def test_settings_the_user_gave_are_kept_and_reported():
    record, _ = _priors_for(["model.image_size=320", "model.kwargs={finest_stride: 16}"])
    searched = record["input"]
    assert searched["chosen"] is None and searched["tried"] == []
    assert searched["user_set"] == ["model.image_size", "model.kwargs.finest_stride"]
    assert "model.image_size kept as the user set it" in searched["note"]
    assert record["bpr_after"] == searched["start"]["bpr"] < COVERAGE_TARGET


def test_a_larger_input_is_chosen_when_the_user_fixed_the_level():
    record, cfg = _priors_for(["model.kwargs={finest_stride: 16}"])
    chosen = record["input"]["chosen"]
    assert chosen["kwargs"] == {"finest_stride": 16} and chosen["image_size"] > cfg.model.image_size
    assert chosen["image_size"] <= 1600 and record["bpr_after"] >= COVERAGE_TARGET  # never beyond the images' size
    assert chosen["relative_cost"] == pytest.approx((chosen["image_size"] / 320) ** 2, rel=0.01)


def test_the_finer_level_the_search_may_choose_exports_to_torchscript():
    """A run whose input search chose finest_stride=8 is exported like any other (the extractor was not
    scriptable: `export --format torchscript` refused the demo's model too)."""
    model = create_model(DEFAULT_MODEL, num_classes=3, image_size=96, finest_stride=8).eval()
    scripted = script_model(model)
    image = torch.rand(3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(scripted([image])[1][0]["boxes"], model([image])[0]["boxes"])


def test_the_doctor_finds_the_priors_of_a_model_blind_to_its_input():
    """A detector trained from scratch starts out all but blind to its input: its decoded boxes and detections are
    the same for any image. They depend on the weights, priors do not: the doctor finds the priors alone (it used
    to add the decoded boxes to them, inflating anchors.coverage and misreading the grid as a stride mismatch)."""
    torch.manual_seed(0)
    model = create_model(DEFAULT_MODEL, num_classes=3, image_size=96)
    with torch.no_grad():  # heads that ignore their input: outputs are their biases
        for head in (model.head.classification_head, model.head.regression_head):
            for conv in (m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None):
                conv.weight.zero_()
                conv.bias.uniform_(-1, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = discover_priors(model, ModelIO("detection").predict, [torch.rand(3, 96, 96) for _ in range(2)])
    (names, generator), = find_prior_generators(model)
    priors = generate_priors(generator, measure_prior_grids(model, 96)[names[0]])
    assert found.boxes.shape == priors.shape
    assert torch.allclose(found.boxes.sort(dim=0).values, priors.sort(dim=0).values, atol=1e-3)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the nudged weights restored


def test_the_model_rebuilt_for_the_chosen_input_keeps_the_weights_the_first_build_found(caplog):
    """Offline, the first build fell back to no weights and said so once; the rebuild asks for none and keeps
    that record."""
    cfg = load_config(None, ["model.kwargs={finest_stride: 8}"])  # pretrained by default
    first = {"used": "none", "source": "random initialisation (whole-model weights: download failed)",
             "requested": {"pretrained": True, "pretrained_backbone": True}, "fallback": ["download failed"],
             "not_loaded": []}
    categories = {"names": ["a", "b"], "dataset_ids": [1, 2], "background": True}
    with caplog.at_level("INFO"):
        model, record = rebuild_run_model(task_for(cfg), cfg, categories, None, first)
    assert record == first and not caplog.records
    assert len(model.anchor_generator.aspect_ratios) == 7  # the stride-8 level is there
