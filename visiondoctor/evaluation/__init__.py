"""Evaluation of detections against COCO ground truth (dicts in, JSON-ready dicts out).

- coco.py            COCO metrics through faster-coco-eval (metrics.json keys) and PR curves
- detection_stats.py detections per image by threshold, score histogram, boxes outside the image
- errors.py          TIDE-style error split with the AP gained by fixing each error type
- consistency.py     score-IoU rank correlation and the high-score/low-IoU population
- predictions.py     prediction checks and per-image grouping shared by the modules above
"""
