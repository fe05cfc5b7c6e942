"""Imports every module that registers models. A new model module adds one line here."""
import importlib

for _module in (
    "visiondoctor.models.detection",
    "visiondoctor.models.segmentation",
    "visiondoctor.models.early_exit",
    "visiondoctor.models.two_stage",
    "visiondoctor.models.text_query",
    "visiondoctor.text_query.model",
    "visiondoctor.models.compare_zoo",
):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as exc:  # a module not written yet, or an optional extra missing
        if exc.name != _module:
            raise
