"""Head output sizes vs the number of classes (every head, auxiliary ones included), and
class-specific box regression."""
from __future__ import annotations

from collections import Counter

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.probe import Observation


def measured_class_counts(obs: Observation) -> dict[str, tuple[str, int]]:
    """Head name -> (role, measured class count): known heads' outputs, else a segmenter's `out`/`aux` logits."""
    counts = dict(obs.head_classes)
    roles = {r for r, _ in counts.values()}
    if obs.task == "segmentation":
        if "out" in obs.train_outputs and "main" not in roles:
            counts["output['out']"] = ("main", obs.train_outputs["out"][1])
        if "aux" in obs.train_outputs and "aux" not in roles:
            counts["output['aux']"] = ("aux", obs.train_outputs["aux"][1])
    return counts


@check("probe", order=30, findings=[FindingDoc(
    "head.num-classes-mismatch", "a head's output size disagrees with the number of classes",
    "the measured output size of every classification head (auxiliary ones included) against the classes the data "
    "needs and against each other; target and predicted labels beyond the head",
    needs="torchvision head classes or heads named classifier/aux*, else a segmenter's out/aux logits",
    severity="error")])
def check_head_classes(model: nn.Module, obs: Observation, num_classes: int | None = None) -> list[Finding]:
    """head.num-classes-mismatch: a head (or an auxiliary head) with another number of outputs than the data needs,
    heads that disagree with each other, or predicted/target labels beyond the head."""
    counts = measured_class_counts(obs)
    if not counts:
        obs.require("eval")
    findings = []
    expected = num_classes
    reference = "the data"
    if expected is None:
        mains = [c for r, c in counts.values() if r == "main"]
        if mains:
            expected, reference = Counter(mains).most_common(1)[0][0], "the main classifier"
    for name, (role, count) in counts.items():
        if expected is None or count == expected:
            continue
        findings.append(Finding(
            id="head.num-classes-mismatch",
            severity="error",
            title=f"The {'auxiliary ' if role == 'aux' else ''}head '{name}' outputs {count} classes, {reference} has {expected}",
            evidence={"head": name, "role": role, "outputs": count, "expected": expected, "all_heads": {k: v[1] for k, v in counts.items()}},
            cause=("An auxiliary classifier left at its default size (e.g. 21 VOC classes) is trained against other labels, "
                   "or not trained at all; its loss, if used, compares different class spaces."
                   if role == "aux" else
                   "The head was built for another dataset's classes; scores for the real classes are read from wrong columns."),
            fix=(f"Replace the last layer of '{name}' with one of {expected} outputs (e.g. "
                 f"model.{name}[-1] = nn.Conv2d(in_channels, {expected}, 1)) and include it in the loss, or remove it "
                 "(aux_loss=False)." if role == "aux" else
                 f"Build the model with num_classes={expected} (torchvision detectors count background as class 0)."),
            where=name,
        ))
    labels_seen = [int(t.max()) for t in obs.gt_labels if t.numel()]
    heads = [c for r, c in counts.values() if r == "main"]
    if labels_seen and heads and max(labels_seen) >= min(heads):
        findings.append(Finding(
            id="head.num-classes-mismatch", severity="error",
            title=f"Target label {max(labels_seen)} does not exist in a head with {min(heads)} outputs",
            evidence={"max_target_label": max(labels_seen), "head_outputs": min(heads)},
            cause="Labels are indexed beyond the classifier: they are either dataset ids used as labels or the head is too small.",
            fix="Map dataset category ids to contiguous labels (visiondoctor.data.samples.CategoryMap) and size the head accordingly.",
            where="targets",
        ))
    if obs.task == "detection" and isinstance(obs.eval_outputs, list) and heads:
        predicted = [int(d["labels"].max()) for d in obs.eval_outputs if isinstance(d, dict) and "labels" in d and d["labels"].numel()]
        if predicted and max(predicted) >= max(heads):
            findings.append(Finding(
                id="head.num-classes-mismatch", severity="error",
                title=f"The model predicts label {max(predicted)}, beyond its {max(heads)}-way classifier",
                evidence={"max_predicted_label": max(predicted), "head_outputs": max(heads)},
                cause="Post-processing maps class columns to labels with an offset that the head does not have.",
                fix="Check the label offset in post-processing (background at 0 for torchvision detectors).",
                where="outputs",
            ))
    return findings


def _layer_io(m: nn.Module) -> tuple[int, int] | None:
    # Linear layers only: in a dense conv head, objectness per anchor (A outputs) beside 4 x A box deltas looks
    # exactly like "4 x classes" (torchvision's RPNHead), so convolutions cannot be told apart by their sizes.
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return None


@check("probe", order=40, findings=[FindingDoc(
    "head.class-specific-regression", "box regression outputs 4 numbers per class",
    "a linear box layer with 4 x C outputs beside a C-way linear classifier on the same input",
    needs="linear layers in the model (their sizes)",
    severity="warning; info for torchvision's Fast R-CNN predictor, which does it by design")])
def check_class_specific_regression(model: nn.Module, num_classes: int | None = None) -> list[Finding]:
    """head.class-specific-regression: a linear box layer with 4 x (classes) outputs beside a linear classifier of
    (classes) outputs taking the same input — the Fast R-CNN predictor pattern."""
    findings = []
    for parent_name, parent in model.named_modules():
        layers = [(n, m, _layer_io(m)) for n, m in parent.named_children() if _layer_io(m) is not None]
        for rn, reg, (rin, rout) in layers:
            for cn, _cls, (cin, cout) in layers:
                if cn == rn or cin != rin or rout != 4 * cout:
                    continue
                if cout < 3 or (num_classes is not None and cout not in (num_classes - 1, num_classes, num_classes + 1)):
                    continue  # one real class (+ background): class-specific and agnostic are the same thing
                standard = isinstance(parent, FastRCNNPredictor)
                where = f"{parent_name}.{rn}" if parent_name else rn
                findings.append(Finding(
                    id="head.class-specific-regression",
                    severity="info" if standard else "warning",
                    title=f"'{where}' regresses a separate box for each of {cout} classes ({rout} outputs)",
                    evidence={"regression_layer": where, "outputs": rout, "classifier_layer": f"{parent_name}.{cn}".lstrip("."),
                              "classifier_outputs": cout, "class_agnostic_outputs": 4},
                    cause="Class-specific regression splits the box-regression signal across classes: each class's "
                          "regressor sees only its own positives, and the layer grows with 4 x classes. With few "
                          "examples per class it learns slowly." + (" (torchvision's Fast R-CNN predictor does this by design.)" if standard else ""),
                    fix="Use one class-agnostic box (nn.Linear(in, 4)) and read it for every class, or keep it only when every class has many examples.",
                    where=where,
                ))
    return findings
