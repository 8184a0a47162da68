"""params.yaml: read it, and fail with one clear line on a value the pipeline cannot use."""
from pathlib import Path

import yaml

from .models import MODELS

CHOICES = {
    "split.by": ("auto", "subject", "slice"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.recipe": ("mriseg", "tutorial"),
    "train.loss": ("bce", "ce", "dice_ce"),
    "train.schedule": ("constant", "cosine"),
    "train.stem_init": ("random", "average"),
}


def load_params(path="params.yaml"):
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"{path}: cannot read parameters ({e})") from None
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a mapping of parameters")
    if params.get("model") not in MODELS:
        raise SystemExit(f"{path}: model must be one of {MODELS}, got {params.get('model')!r}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = params.get(section, {}).get(name)
        if value is not None and value not in allowed:
            raise SystemExit(f"{path}: {key} must be one of {allowed}, got {value!r}")
    train_value(params, path, "context", 0, lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0",
                "neighbouring slices each side")
    train_value(params, path, "width", 16, lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1",
                "the UNet's first-stage channels")
    train_value(params, path, "bias_field", 0.0, lambda v: isinstance(v, (int, float)) and 0 <= v <= 5,
                "a number from 0 to 5", "strength of the augmentation's intensity field; 0 = none")
    return params


def train_value(params, path, name, default, is_valid, requirement, meaning):
    """One line naming the file and the key when train.<name> is not a value the pipeline can use."""
    value = params.get("train", {}).get(name, default)
    if isinstance(value, bool) or not is_valid(value):  # YAML's true/false are ints to Python
        raise SystemExit(f"{path}: train.{name} must be {requirement} ({meaning}), got {value!r}")
