"""Class-incremental detection: phases that add classes to a two-stage detector without
forgetting the old ones (exemplar replay, distillation of old-class RoI logits, gradual
unfreezing), evaluated after every phase on old, new and all seen classes.

    from visiondoctor.incremental.task import run_phases, IncrementalOptions
    results = run_phases(cfg, "data/phases.json", method="replay+distill")

Modules: phases (the plan, per-phase data, exemplar memory), distill (the KL loss), unfreeze
(the gradual-unfreezing Callback), metrics (per-phase AP and forgetting), task (run_phases),
report_sections (the report's per-phase section). Importing the package registers the section.
"""
from visiondoctor.incremental import report_sections  # noqa: F401 - importing it registers the report section
