"""Crash safety through the command line: SIGKILL mid-epoch then --resume, a corrupted last
checkpoint, a disk that fills up while a checkpoint is written.

An uninterrupted run is the reference. Resuming restores the weights, optimizer, the data
order within the epoch and the random state of the augmentations, so a killed-and-resumed run
must end with the reference's step count and (up to float rounding) its weights: no step lost
beyond the last checkpoint, none repeated twice into the weights.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visiondoctor.cli import main
from visiondoctor.engine.checkpoint import list_checkpoints, load_checkpoint_file, load_latest, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, BATCH, EPOCHS, EVERY = 24, 4, 2, 2
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 6: checkpoints at steps 2 and 4 fall mid-epoch
# Float noise only (the runs do the same operations in the same order; BLAS threading may differ).
WEIGHT_RTOL, WEIGHT_ATOL = 1e-3, 1e-4


def train_args(out: Path, name: str) -> list[str]:
    return ["train", "--synth", "shapes", "--name", name, "--output-dir", str(out), "--epochs", str(EPOCHS),
            "--batch-size", str(BATCH), "--image-size", "96", "--device", "cpu",
            "--set", f"data.synth_images={TRAIN_IMAGES}",
            "--set", "data.synth_options={num_val: 2, num_test: 2, image_size: 96, min_size: 12, max_size: 48}",
            "--set", "train.warmup_steps=2", "--set", "train.monitors=false",
            "--set", f"train.checkpoint_every_steps={EVERY}"]  # default augmentation: the random state matters


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run (it also generates the synthetic data the other runs reuse)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(train_args(out, "reference")) == 0
    return out, load_latest(out / "reference" / "checkpoints")[1]


def assert_same_final_state(run: Path, reference_state: dict) -> None:
    _, state = load_latest(run / "checkpoints")
    assert state["step"] == reference_state["step"] == EPOCHS * STEPS_PER_EPOCH
    assert state["epoch"] == EPOCHS and state["batch_in_epoch"] == 0
    for name, value in reference_state["model"].items():
        torch.testing.assert_close(state["model"][name], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=name)
    train_rows = [r for r in state["history"] if r["split"] == "train"]
    assert [r["epoch"] for r in train_rows] == list(range(1, EPOCHS + 1))  # one row per epoch, none repeated


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_completes_the_run(reference, caplog):
    out, reference_state = reference
    run = out / "killed"
    # The same thread count as the in-process reference and resume: with another count the BLAS
    # reductions differ in the last bits, and SSD's hard-negative mining (a top-k) can amplify that.
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "visiondoctor", *train_args(out, "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(run / "checkpoints"):  # the first checkpoint, at step 2 of 6
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()  # it was still training

    _, state = load_latest(run / "checkpoints")
    killed_at = state["step"]
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < STEPS_PER_EPOCH  # mid-epoch

    with caplog.at_level(logging.INFO):
        assert main([*train_args(out, "killed"), "--resume"]) == 0
    assert f"at step {killed_at} (epoch 0, batch {killed_at})" in caplog.text  # resumed where it was saved
    assert_same_final_state(run, reference_state)
    assert (run / "metrics.json").exists() and (run / "report.html").exists()


@pytest.mark.slow
def test_corrupted_last_checkpoint_resumes_from_the_previous_one(reference, caplog):
    # (a truncated file is caught by the same checksum: tests/test_engine.py)
    out, reference_state = reference
    run = out / "corrupted"
    shutil.copytree(out / "reference", run)
    last = list_checkpoints(run / "checkpoints")[-1]
    data = bytearray(last.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):  # flip 16 bytes inside the tensor data
        data[i] ^= 0xFF
    last.write_bytes(bytes(data))
    previous_step = load_checkpoint_file(list_checkpoints(run / "checkpoints")[-2])["step"]
    assert previous_step < reference_state["step"]

    with caplog.at_level(logging.INFO):
        assert main([*train_args(out, run.name), "--resume"]) == 0
    assert "checksum mismatch" in caplog.text and "falling back to the previous checkpoint" in caplog.text
    assert f"resumed from {run / 'checkpoints'}" in caplog.text and f"at step {previous_step}" in caplog.text
    assert_same_final_state(run, reference_state)


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import visiondoctor.rundir as rundir

    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(1000)})

    def fsync_fails(fd):  # the data went to the page cache; flushing it to the full disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt", "step_00000001.pt.sha256"]  # no debris
    path, state = load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
