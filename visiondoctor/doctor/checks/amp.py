"""Autocast coverage: which modules ran under autocast during one training step."""
from __future__ import annotations

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.introspect import top_level
from visiondoctor.doctor.probe import Observation


def _by_group(state: dict[str, bool]) -> dict[str, tuple[int, int]]:
    groups: dict[str, list[bool]] = {}
    for name, on in state.items():
        groups.setdefault(top_level(name, 2), []).append(on)
    return {g: (sum(v), len(v)) for g, v in groups.items()}


AMP_PARTIAL = FindingDoc(
    "amp.partial", "only part of the forward/loss ran under autocast",
    "whether autocast was enabled when each parameterised module ran, in a training forward as the loop runs it "
    "and in one wrapped in an outer autocast", needs="the contract only",
    severity="warning when only some modules run under autocast; info when modules switch an outer autocast off")


@check("probe", findings=[AMP_PARTIAL], order=100)
def check_autocast_coverage(obs: Observation) -> list[Finding]:
    """amp.partial from the probe's two training forwards (without and with an outer autocast)."""
    obs.require("train")
    return autocast_findings(obs.autocast_plain, obs.autocast_outer, obs.autocast_outer_device)


def autocast_findings(plain: dict[str, bool], outer: dict[str, bool] | None = None, outer_device: str = "") -> list[Finding]:
    """amp.partial: in `plain` (a step as the loop runs it), some modules ran under autocast and others did not;
    in `outer` (a step wrapped in autocast), modules that turned it off."""
    findings = []
    on = [n for n, v in plain.items() if v]
    off = [n for n, v in plain.items() if not v]
    if on and off:
        groups = _by_group(plain)
        covered = sorted(g for g, (k, n) in groups.items() if k == n)
        findings.append(Finding(
            id="amp.partial",
            severity="warning",
            title=f"Only {len(on)} of {len(on) + len(off)} layers run under autocast ({', '.join(covered[:3]) or 'part of the model'}); "
                  "the rest runs in full precision",
            evidence={"modules_under_autocast": len(on), "modules_without": len(off),
                      "per_module_group_under_autocast": {g: f"{k}/{n}" for g, (k, n) in sorted(groups.items())},
                      "examples_under_autocast": on[:5], "examples_without": off[:5]},
            cause="autocast wraps only part of the forward: the rest gets no mixed-precision speed-up, tensors are cast "
                  "back and forth at the boundary, and losses from different precisions are added.",
            fix="Wrap the whole forward and the loss in one torch.autocast(...) context (with a GradScaler for fp16) "
                "in the training loop, not inside the model around one part.",
            where=covered[0] if covered else "",
        ))
    outer = outer or {}
    disabled = [n for n, v in outer.items() if not v]
    if outer and disabled and not (on and off):
        groups = _by_group(outer)
        findings.append(Finding(
            id="amp.partial",
            severity="info",
            title=f"{len(disabled)} layers switch autocast off inside the model",
            evidence={"probe": outer_device, "modules_with_autocast_disabled": disabled[:10],
                      "per_module_group_under_autocast": {g: f"{k}/{n}" for g, (k, n) in sorted(groups.items())}},
            cause="The model disables autocast for these layers (fine when deliberate, e.g. a numerically sensitive loss).",
            fix="Nothing if deliberate; otherwise remove the autocast(enabled=False) around them.",
            where=top_level(disabled[0], 2),
        ))
    return findings
