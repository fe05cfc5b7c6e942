"""Report section of a text-query run: do training and inference agree? (text_query.json)

Shows how the score is formed, the IoU of detections emitted at would-be training positives
against those emitted elsewhere (the seed's first-priority check), the score-IoU rank
correlation, and the open-vocabulary AP per held-out query, apart from the training names.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from visiondoctor.report import plots
from visiondoctor.report.formatting import fmt
from visiondoctor.report.inputs import finite, read_json
from visiondoctor.report.sections import Figure, Heading, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

ANALYSIS_FILE = "text_query.json"  # written by visiondoctor.text_query.task.analyse_run
TITLE = "Text queries: do training and inference agree?"
POPULATIONS = (("candidates", "every location above the score threshold, before NMS"),
               ("detections", "final detections, after NMS and top-k"))


@register_section(85, title=TITLE, needs=(ANALYSIS_FILE,), optional=True)
def text_query_section(run: RunDir) -> Section | None:
    data = read_json(run, ANALYSIS_FILE)
    if not isinstance(data, dict):
        return None
    blocks: list[Any] = [Paragraph(
        f"Scoring '{data.get('scoring', '?')}': score = {data.get('score_formula', '?')}. "
        f"Training queries: {', '.join(map(str, data.get('train_queries', [])))} "
        f"(text encoder: {data.get('encoder', '?')}).")]
    pvr = data.get("positives_vs_rest")
    if isinstance(pvr, dict):
        blocks += positives_blocks(pvr)
    consistency = data.get("consistency")
    if isinstance(consistency, dict) and finite(consistency.get("spearman")) is not None:
        blocks.append(Paragraph(
            f"Score-IoU Spearman rank correlation of the final detections: {float(consistency['spearman']):.3f} "
            f"over {fmt(consistency.get('n'))} detections; share of high-score detections with IoU < 0.3: "
            f"{fmt(consistency.get('high_score_low_iou_share'))} (the same figures as the Error analysis section)."))
    ov = data.get("open_vocabulary")
    if isinstance(ov, dict) and ov.get("groups"):
        blocks += open_vocabulary_blocks(ov)
    return Section(TITLE, blocks)


def positives_blocks(pvr: dict) -> list[Any]:
    blocks: list[Any] = [Heading("Boxes at training positives versus everywhere else"), Paragraph(
        "Box regression is trained only at positive locations, yet inference emits a box from every location "
        "whose score passes the threshold. Each evaluated image is run through the training assigner "
        f"(radius {fmt(pvr.get('radius'))} cells, IoU threshold {fmt(pvr.get('iou_threshold'))}) to mark the "
        "locations that would be positives; IoU is with the best same-class ground-truth box.")]
    rows = []
    for population, description in POPULATIONS:
        for group in ("positive", "rest"):
            s = (pvr.get(population) or {}).get(group) or {}
            rows.append([population, "training positives" if group == "positive" else "elsewhere", s.get("n"),
                         s.get("mean_iou"), s.get("share_iou_ge_0.5"), s.get("mean_score"), s.get("spearman")])
    blocks.append(Table(["population", "locations", "n", "mean IoU", "share IoU ≥ 0.5", "mean score",
                         "score-IoU Spearman"], rows,
                        caption="; ".join(f"{p}: {d}" for p, d in POPULATIONS)))
    verdict = _verdict(pvr.get("detections") or {})
    if verdict:
        blocks.append(verdict)
    hist = {g: ((pvr.get("detections") or {}).get(g) or {}).get("iou_histogram") for g in ("positive", "rest")}
    if all(isinstance(h, dict) and h.get("counts") for h in hist.values()):
        blocks.append(Figure("text_query_iou_positives_vs_rest", iou_histograms(hist)))
    return blocks


def _verdict(detections: dict) -> Paragraph | None:
    pos, rest = detections.get("positive") or {}, detections.get("rest") or {}
    p_iou, r_iou = finite(pos.get("mean_iou")), finite(rest.get("mean_iou"))
    if p_iou is None or r_iou is None:
        return None
    text = (f"{fmt(rest.get('n'))} of {fmt((pos.get('n') or 0) + (rest.get('n') or 0))} final detections come from "
            f"locations that training never regressed; their mean IoU is {r_iou:.3f} against {p_iou:.3f} at "
            "positives.")
    rho = finite(rest.get("spearman"))
    if rho is not None:
        text += (f" Their scores rank them by IoU with Spearman {rho:.3f}: "
                 + ("the score knows which of these boxes are good." if rho >= 0.3 else
                    "the score barely knows which of these boxes are good (train a box-quality branch "
                    "at every location and put it in the score)."))
    return Paragraph(text, style="warning" if r_iou < 0.5 * p_iou and (rho is None or rho < 0.3) else "text")


def iou_histograms(hist: dict[str, dict]) -> bytes:
    """IoU distributions (share of each population per bin) of detections at positives and elsewhere."""
    fig = plots.new_figure(5.5, 3.2)
    ax = fig.add_subplot()
    labels = {"positive": "at training positives", "rest": "elsewhere"}
    for i, (group, h) in enumerate(hist.items()):
        counts = np.asarray(h["counts"], float)
        edges = np.asarray(h.get("bins") or np.linspace(0, 1, len(counts) + 1), float)
        share = counts / counts.sum() if counts.sum() else counts
        ax.stairs(share, edges, label=f"{labels.get(group, group)} (n={int(counts.sum())})", color=f"C{i}",
                  linewidth=2)
    ax.set_xlabel("IoU with best same-class ground truth")
    ax.set_ylabel("share of detections")
    ax.set_title("Final detections: IoU by where they were emitted")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return plots.to_png(fig)


def open_vocabulary_blocks(ov: dict) -> list[Any]:
    blocks: list[Any] = [Heading("Open vocabulary: held-out query names"), Paragraph(
        f"AP of each query against the ground truth of the class it names, on {fmt(ov.get('images'))} images "
        "containing every shape class. Groups are reported apart: the training names, synonyms never used in "
        "training, and classes absent from the training data.")]
    summary, rows = [], []
    for name, group in ov["groups"].items():
        summary.append([name, group.get("description", ""), len(group.get("queries", {})), group.get("map"),
                        group.get("map50")])
        for query, r in group.get("queries", {}).items():
            rows.append([name, query, r.get("class"), r.get("seen_in_training"), r.get("ap"), r.get("ap50"),
                         r.get("detections")])
    blocks.append(Table(["group", "what", "queries", "mAP", "mAP50"], summary))
    blocks.append(Table(["group", "query", "class", "trained on this name", "AP", "AP50", "detections"], rows))
    return blocks
