"""The text-query dense detector (`text_query_dense`): query encoder (encoder.py), positives and
quality targets (assign.py), its loss (loss.py) and the model (model.py). Training, analysis and
the report section live in the feature package visiondoctor.text_query."""
