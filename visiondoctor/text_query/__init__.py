"""Text-query (open-vocabulary) dense detection whose training and inference agree.

encoder.py (query -> embedding, cached), assign.py (positives, quality targets), loss.py,
model.py (the detector, registered as `text_query_dense`), inference.py (free-text queries on
a trained run), data.py (shapes data, held-out query names), analysis.py (positives versus the
rest, score-IoU consistency, open-vocabulary figures), task.py (train / evaluate a run),
report_sections.py (the report section).
"""
