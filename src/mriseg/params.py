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
    whole_number(params, path, "context", 0, 0, "neighbouring slices each side")
    whole_number(params, path, "width", 16, 1, "the UNet's first-stage channels")
    bias = params.get("train", {}).get("bias_field", 0.0)
    if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not 0 <= bias < 5:
        raise SystemExit(f"{path}: train.bias_field must be a number from 0 to 5 (strength of the augmentation's "
                         f"intensity field; 0 = none), got {bias!r}")
    return params


def whole_number(params, path, name, default, minimum, meaning):
    value = params.get("train", {}).get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SystemExit(f"{path}: train.{name} must be a whole number >= {minimum} ({meaning}), got {value!r}")
