"""Named YAML configs shipped with the package (the demo's among them); real examples of the config format."""
from pathlib import Path

PRESETS_DIR = Path(__file__).parent


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        available = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no preset {name!r}; available: {available}")
    return path
