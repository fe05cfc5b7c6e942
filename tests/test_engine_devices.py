"""The GPU-path options of the Trainer, checked on CPU: channels_last (auto/on/off), pinned memory
and persistent workers. (AMP and torch.compile need the GPU / a compiler: benchmarks/throughput.py.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny import SquaresDataset, tiny_ssd
from visiondoctor.config import TrainConfig
from visiondoctor.data.dataset import collate_detection
from visiondoctor.engine.trainer import Trainer, channels_last_enabled


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=1, batch_size=4, warmup_steps=1, device="cpu", amp="off", monitors=False), **kw})


def test_channels_last_auto_is_for_convolutional_models_on_cuda_and_cpu():
    conv, mlp = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Linear(3, 4))
    assert channels_last_enabled("auto", conv, torch.device("cuda", 0))
    assert not channels_last_enabled("auto", mlp, torch.device("cuda", 0))
    assert channels_last_enabled("auto", conv, torch.device("cpu"))  # 1.02-1.83x on the development CPU
    assert not channels_last_enabled("auto", mlp, torch.device("cpu"))
    assert not channels_last_enabled("auto", conv, torch.device("meta"))
    assert channels_last_enabled("on", conv, torch.device("cpu")) and not channels_last_enabled("off", conv, torch.device("cuda"))
    with pytest.raises(ValueError, match="train.channels_last"):
        channels_last_enabled("yes", conv, torch.device("cpu"))


def test_channels_last_trains_and_resumes(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(tiny_ssd(), SquaresDataset(8), _cfg(channels_last="on"), collate_fn=collate_detection,
                      run_dir=tmp_path)
    conv = trainer.model.backbone.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    result = trainer.fit()
    assert result.steps == 2 and all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # the checkpoint (NHWC tensors) resumes into a plain NCHW model, and the other way round
    plain = Trainer(tiny_ssd(), SquaresDataset(8), _cfg(), collate_fn=collate_detection, run_dir=tmp_path)
    assert plain.resume() and plain.state.step == 2
    torch.testing.assert_close(plain.model.backbone.stem[0].weight, conv.detach().contiguous())


def test_loader_options_follow_the_device():
    cpu = Trainer(tiny_ssd(), SquaresDataset(8), _cfg(), collate_fn=collate_detection, workers=1)
    assert cpu.train_loader.pin_memory is False  # pinning only helps host-to-GPU copies
    assert cpu.train_loader.persistent_workers is True  # workers survive between epochs
    assert Trainer(tiny_ssd(), SquaresDataset(8), _cfg(), collate_fn=collate_detection).train_loader.persistent_workers is False
