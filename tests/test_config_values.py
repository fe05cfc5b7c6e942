"""Config values as users write them, on the command line (--set) and in YAML files."""
from visiondoctor.config import load_config


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
