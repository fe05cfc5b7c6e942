"""Text-query (open-vocabulary) dense detection whose training and inference agree.

The model itself lives in visiondoctor.models.text_query (encoder, positives, loss, model,
registered as `text_query_dense` with task "text_query"). This feature package adds: task.py (the
`text_query` task of the run pipeline: class names as queries, text_query.json), inference.py
(free-text queries on a trained run), data.py (shapes data, held-out query names), analysis.py
(positives versus the rest, open-vocabulary figures), report_sections.py (the report section).
Importing the package registers the task and the report section.
"""
from visiondoctor.text_query import report_sections, task  # noqa: F401 - importing them registers the task and section
