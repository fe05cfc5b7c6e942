"""Frozen modules whose BatchNorm layers still update their running statistics."""
from __future__ import annotations

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.probe import Observation


@check("probe", order=80, findings=[FindingDoc(
    "bn.frozen-but-updating", "frozen modules whose BatchNorm statistics still update",
    "BatchNorm layers inside modules whose parameters are all frozen, in train mode, whose running mean moved during "
    "one training forward", needs="the contract only", severity="warning")])
def check_frozen_batchnorm(obs: Observation) -> list[Finding]:
    """bn.frozen-but-updating: BatchNorm in train mode inside a module whose parameters are all frozen, measured
    by the running mean changing across one training forward."""
    obs.require("train")
    owners: dict[str, list] = {}
    for bn in obs.batchnorms:
        if bn.training and bn.changed and bn.frozen_owner is not None:
            owners.setdefault(bn.frozen_owner, []).append(bn)
    if not owners:
        return []
    layers = [bn for group in owners.values() for bn in group]
    names = sorted(o or "(whole model)" for o in owners)
    return [Finding(
        id="bn.frozen-but-updating",
        severity="warning",
        title=f"{len(layers)} BatchNorm layers in frozen modules ({', '.join(names[:3])}{'...' if len(names) > 3 else ''}) "
              "still update their running statistics",
        evidence={"frozen_modules": names, "batchnorm_layers": len(layers),
                  "max_running_mean_change_in_one_step": round(max(bn.max_abs_change for bn in layers), 6),
                  "examples": [bn.name for bn in layers[:5]]},
        cause="requires_grad=False freezes weights but not BatchNorm's running mean/var: in train mode they keep "
              "following the new data's batch statistics, so the frozen layers' outputs drift away from what the "
              "weights were trained for (and small batches make the statistics noisy).",
        fix="Keep frozen BatchNorm in eval mode (override model.train() to call .eval() on them), or replace them with "
            "torchvision.ops.FrozenBatchNorm2d (torchvision's detection backbones do), or unfreeze them.",
        where=names[0],
    )]
