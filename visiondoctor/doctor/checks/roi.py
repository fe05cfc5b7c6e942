"""RoIAlign / RoIPool spatial_scale vs the feature-to-image ratio measured during the probe forward."""
from __future__ import annotations

import math

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.probe import Observation

SCALE_TOLERANCE_LOG2 = 0.2  # ~15 %: torchvision rounds scales to powers of two; padding moves them by a few %


@check("probe", order=90, findings=[FindingDoc(
    "roi.scale-mismatch", "RoIAlign/RoIPool spatial_scale disagrees with the measured feature-to-image ratio",
    "every torchvision RoI pooling call seen at the dispatcher: its spatial_scale against the measured ratio of its "
    "input map to the image (off by more than 2^0.2)", needs="the contract only (RoI ops from torchvision.ops)",
    severity="error")])
def check_roi_scale(obs: Observation) -> list[Finding]:
    """roi.scale-mismatch: every RoI pooling call whose spatial_scale disagrees with its input map's measured scale."""
    obs.require("eval")
    if not obs.roi_calls or obs.features is None or obs.features.reference_hw is None:
        return []
    ref_h, ref_w = obs.features.reference_hw
    bad: dict[tuple, dict] = {}
    for call in obs.roi_calls:
        measured = call.feature_hw[1] / ref_w
        if measured <= 0 or call.spatial_scale <= 0:
            continue
        if abs(math.log2(call.spatial_scale / measured)) > SCALE_TOLERANCE_LOG2:
            key = (call.op, call.feature_hw, round(call.spatial_scale, 6))
            bad.setdefault(key, {"op": call.op, "feature_hw": list(call.feature_hw), "spatial_scale": call.spatial_scale,
                                 "implied_stride": round(1 / call.spatial_scale, 2),
                                 "measured_scale": round(measured, 5), "measured_stride": round(1 / measured, 2),
                                 "image_hw": [ref_h, ref_w], "calls": 0})["calls"] += 1
    findings = []
    for ev in bad.values():
        findings.append(Finding(
            id="roi.scale-mismatch",
            severity="error",
            title=f"{ev['op']} uses spatial_scale 1/{ev['implied_stride']:g} on a feature map of measured stride "
                  f"{ev['measured_stride']:g}: every RoI is pooled from the wrong place",
            evidence=ev,
            cause="spatial_scale maps image-space boxes onto the feature map; with the wrong value the pooled region is "
                  f"scaled by {ev['measured_stride'] / ev['implied_stride']:.2f}, so features come from another part of the image.",
            fix=f"Pass spatial_scale=1/{ev['measured_stride']:g} (feature size / image size), or use "
                "torchvision.ops.MultiScaleRoIAlign, which infers the scale from the shapes.",
            where=ev["op"],
        ))
    return findings
