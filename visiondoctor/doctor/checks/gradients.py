"""Parameters that get no gradient after one backward; gradient-norm explosion and vanishing per module."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.probe import Observation
from visiondoctor.engine.distributed import unused_parameters_advice, world_size

NO_GRAD_ERROR_FRACTION = 0.01  # 1 % of the trainable weights idle is a whole layer or head, not a stray bias


def compress_to_modules(param_names: Sequence[str], all_params: Sequence[str]) -> list[str]:
    """Shortest module paths whose every parameter is in `param_names` (e.g. 'aux_classifier' for all its weights)."""
    chosen = set(param_names)
    out: list[str] = []
    for name in param_names:
        parts = name.split(".")[:-1]
        best = ".".join(parts) or name
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            members = [p for p in all_params if p.startswith(prefix + ".")]
            if members and all(p in chosen for p in members):
                best = prefix
                break
        if best not in out:
            out.append(best)
    return out


@check("probe", order=60, findings=[FindingDoc(
    "params.no-gradient", "trainable parameters receive no gradient",
    "trainable parameters whose .grad is still None after a backward of the training loss", needs="the contract only",
    severity="error when >= 1 % of the trainable weights, else warning")])
def check_no_gradient(obs: Observation) -> list[Finding]:
    """params.no-gradient: trainable parameters whose .grad is still None after a backward of the training loss."""
    obs.require("train")
    if not obs.no_grad:
        return []
    total = sum(obs.trainable.values()) or 1
    idle = sum(obs.trainable.get(n, 0) for n in obs.no_grad)
    modules = compress_to_modules(obs.no_grad, list(obs.trainable))
    frac = idle / total
    evidence = {"modules": modules[:20], "parameters_without_grad": len(obs.no_grad), "weights_without_grad": idle,
                "fraction_of_trainable_weights": round(frac, 4), "loss_components": sorted(obs.losses)}
    ddp = unused_parameters_advice(len(obs.no_grad))  # under torchrun they also cost DDP a graph walk per step
    if ddp:
        evidence["ddp_world_size"] = world_size()
    return [Finding(
        id="params.no-gradient",
        severity="error" if frac >= NO_GRAD_ERROR_FRACTION else "warning",
        title=f"{', '.join(modules[:3])}{' and more' if len(modules) > 3 else ''} "
              f"{'gets' if len(modules) == 1 else 'get'} no gradient: {'its' if len(modules) == 1 else 'their'} "
              "output is not in the loss",
        evidence=evidence,
        cause="These parameters require grad but no loss term depends on them, so the optimizer never updates them "
              "(a head computed but left out of the loss, or a branch the forward never uses)." + (f" {ddp}" if ddp else ""),
        fix="Add the missing loss term (e.g. loss = main + 0.4 * aux for a segmentation aux head), or delete the unused "
            "branch / set requires_grad=False on it so it is not mistaken for trained.",
        where=modules[0],
    )]


@check("monitor", order=30, findings=[
    FindingDoc("grad.exploding", "gradient norm explodes",
               "each top-level module's gradient norm per step against its running median",
               needs="the contract only", severity="warning; error if still high at the end"),
    FindingDoc("grad.vanishing", "gradient norm vanishes",
               "a module's median gradient norm against the median of the other modules (below 1e-6 x)",
               needs="the contract only", severity="warning")])
def grad_norm_findings(grad_history: Mapping[str, Sequence[float]], grad_steps: Sequence[int],
                       explode_factor: float = 100.0, vanish_ratio: float = 1e-6) -> list[Finding]:
    """grad.exploding / grad.vanishing from per-module gradient-norm histories (same length as `grad_steps`).

    Exploding: a module's norm jumps above `explode_factor` x its running median of the earlier steps.
    Vanishing: a module's norm stays below `vanish_ratio` x the median norm of the other modules over the
    last half of the history (it trains while the rest of the network does)."""
    findings = []
    medians: dict[str, float] = {}
    for name, values in grad_history.items():
        finite = [v for v in values if v == v and abs(v) != float("inf")]
        if len(finite) < 4:
            continue
        for i in range(3, len(values)):
            earlier = sorted(v for v in values[:i] if v == v and abs(v) != float("inf"))
            if not earlier:
                continue
            med = earlier[len(earlier) // 2]
            if med > 0 and values[i] > explode_factor * med:
                findings.append(Finding(
                    id="grad.exploding", severity="warning" if values[-1] <= explode_factor * med else "error",
                    title=f"Gradient norm of '{name}' jumped to {values[i]:.3g}, {values[i] / med:.0f}x its median",
                    evidence={"module": name, "step": grad_steps[i], "grad_norm": round(values[i], 6), "median_before": round(med, 6),
                              "last_grad_norm": round(values[-1], 6)},
                    cause="A learning rate too high for this module, a loss term without normalisation, "
                          "or a degenerate target (e.g. box deltas of unbounded size).",
                    fix="Lower the learning rate or add warm-up, clip gradients (train.grad_clip), and check the "
                        "targets of the loss that feeds this module.",
                    where=name))
                break
        half = finite[len(finite) // 2:]
        medians[name] = sorted(half)[len(half) // 2]
    for name, med in medians.items():
        others = [m for n, m in medians.items() if n != name and m > 0]
        if not others:
            continue
        ref = sorted(others)[len(others) // 2]
        if med < vanish_ratio * ref:
            findings.append(Finding(
                id="grad.vanishing", severity="warning",
                title=f"'{name}' gets gradients {med / ref if ref else 0:.1e} times smaller than the rest of the model",
                evidence={"module": name, "median_grad_norm": med, "median_grad_norm_other_modules": ref},
                cause="The signal does not reach this module: saturated activations, a detach(), a zero loss weight, "
                      "or a very deep path without normalisation.",
                fix="Check for .detach()/no_grad around this module's output and for a zero loss weight; add "
                    "normalisation or skip connections.",
                where=name))
    return findings


@check("probe", order=70, findings=[FindingDoc(
    "optimizer.missing-params", "trainable parameters the optimizer does not hold (or a param group with lr 0)",
    "trainable parameters held by no param group of the optimizer, and groups with lr 0",
    needs="the optimizer", severity="error; warning for a group with lr 0")])
def check_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> list[Finding]:
    """optimizer.missing-params: trainable parameters that no param group of the optimizer holds, or groups with lr 0."""
    if optimizer is None:
        return []
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    findings = []
    if missing:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        modules = compress_to_modules(missing, names)
        findings.append(Finding(
            id="optimizer.missing-params", severity="error",
            title=f"{len(missing)} trainable parameters ({', '.join(modules[:3])}{'...' if len(modules) > 3 else ''}) "
                  "are not in the optimizer: they get gradients but are never updated",
            evidence={"modules": modules[:20], "parameters_missing": len(missing), "trainable_parameters": len(names)},
            cause="The optimizer was built before a layer was replaced (e.g. a new head), or from a subset of the model.",
            fix="Build the optimizer after the last change to the model, from model.parameters() (filtered by requires_grad).",
            where=modules[0]))
    zero = [i for i, g in enumerate(optimizer.param_groups) if float(g.get("lr", 1.0)) == 0.0]
    if zero:
        findings.append(Finding(
            id="optimizer.missing-params", severity="warning",
            title=f"Optimizer param group(s) {zero} have learning rate 0",
            evidence={"groups_with_lr_0": zero, "groups": len(optimizer.param_groups)},
            cause="A schedule that starts at 0 (warm-up) or a group deliberately frozen.",
            fix="Nothing if this is the first warm-up step; otherwise set a learning rate or remove the group.",
            where="optimizer"))
    return findings
