"""Early exit, beyond the model: calibrating an early-exit run's exit policy and analysing it.

Where things live:
- visiondoctor/models/early_exit.py          the model (`ssdlite320_early_exit`), routing, confidence signals
- visiondoctor/evaluation/early_exit.py      policy maths on collected records: signal choice, threshold sweep,
                                             calibration to a budget, held-out evaluation (no model needed)
- visiondoctor/evaluation/latency.py         generic timing: warm-up, interleaved variants, mean/median
- visiondoctor/early_exit/latency.py         the model's paths timed in eager PyTorch and ONNX Runtime; FLOPs
- visiondoctor/early_exit/analysis.py        `calibrate_and_analyse(run_dir, ...)`: the whole analysis of a run
- visiondoctor/early_exit/report_sections.py the report's "Early exit" section (from early_exit.json)

The model trains through the detection task; importing this package registers the report section.
"""
from visiondoctor.early_exit import report_sections  # noqa: F401 - importing it registers the report section
