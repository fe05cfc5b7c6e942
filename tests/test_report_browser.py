"""The reports load in a real browser: every embedded image decodes (headless Chromium through
tests/browser_check.py). Skipped, with the reason, where selenium / Chromium / chromedriver are absent."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser_check import BrowserUnavailable, check_report
from quality_runs import make_detection_run, make_segmentation_run
from visiondoctor.report.html import build_report


def checked(html: Path, min_images: int) -> list[str]:
    try:
        return check_report(html, min_images=min_images)
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")


def test_detection_and_segmentation_reports_load_every_image(tmp_path: Path) -> None:
    detection = build_report(make_detection_run(tmp_path))
    segmentation = build_report(make_segmentation_run(tmp_path))
    # detection: confusion matrix + gallery; segmentation: per-class IoU, confusion matrix, worst images
    assert checked(detection, min_images=2) == []
    assert checked(segmentation, min_images=3) == []


def test_browser_check_reports_a_broken_image(tmp_path: Path) -> None:
    report = build_report(make_detection_run(tmp_path))
    html = report.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/]{16}', 'src="data:image/png;base64,' + "A" * 16,
                             html, count=1), encoding="utf-8")
    problems = checked(broken, min_images=2)
    assert len(problems) == 1 and "did not load" in problems[0] and "naturalWidth=0" in problems[0]
