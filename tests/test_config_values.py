"""Config values as users write them, on the command line (--set) and in YAML files."""
import pytest
import yaml

from visiondoctor.config import ConfigError, load_config, save_config


def test_on_off_words_stay_text_in_text_fields(tmp_path):
    """YAML 1.1 reads on/off/yes/no as booleans; a text field such as train.channels_last (auto | on | off) must
    receive the word itself, from the command line and from a file, while boolean fields still accept them."""
    cfg = load_config(None, ["train.channels_last=off", "train.monitors=no", "train.tensorboard=on", "train.lr=1e-3"])
    assert cfg.train.channels_last == "off" and cfg.train.monitors is False and cfg.train.tensorboard is True
    assert cfg.train.lr == 0.001
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  channels_last: on\n  augment: light\n  monitors: false\n")
    cfg = load_config(path)
    assert cfg.train.channels_last == "on" and cfg.train.monitors is False


def test_batch_size_auto_is_8_on_cpu_16_on_a_gpu_and_recorded_as_a_number(tmp_path):
    """train.batch_size: auto resolves when the config is built (a run's config.yaml holds the number it
    trained with); a number given stays; anything else is an error naming the key."""
    assert load_config(None, ["train.device=cpu"]).train.batch_size == 8
    assert load_config(None, ["train.device=cuda"]).train.batch_size == 16
    assert load_config(None, ["train.device=cpu", "train.batch_size=24"]).train.batch_size == 24
    path = tmp_path / "run.yaml"
    save_config(load_config(None, ["train.device=cpu"]), path)
    assert yaml.safe_load(path.read_text())["train"]["batch_size"] == 8
    for bad in ("0", "-4", "big", "2.5"):
        with pytest.raises(ConfigError, match="train.batch_size"):
            load_config(None, [f"train.batch_size={bad}"])
