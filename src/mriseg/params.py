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
    context = params.get("train", {}).get("context", 0)
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise SystemExit(f"{path}: train.context must be a whole number >= 0 (neighbouring slices each side), "
                         f"got {context!r}")
    width = params.get("train", {}).get("width", 16)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise SystemExit(f"{path}: train.width must be a whole number >= 1 (the UNet's first-stage channels), "
                         f"got {width!r}")
    return params
