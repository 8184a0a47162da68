"""params.yaml: read it, and fail with one clear line on a value the pipeline cannot use."""
from pathlib import Path

import yaml

from .errors import ParamsError
from .labels import CSF_BORDERS, CSF_RULES, SourceError, parse_labels
from .volumes import VIEWS

MODELS = ("unet", "resnet")  # models.build_model builds each
NORMS = ("batch", "group")  # train.norm: the UNet's normalisation layers (models.conv3x3_bn)
CHOICES = {
    "split.by": ("auto", "subject", "slice"),
    "data.skull_strip": ("auto", "yes", "no"),
    "data.csf": CSF_RULES,
    "train.device": ("auto", "cpu", "cuda"),
    "train.recipe": ("mriseg", "tutorial"),
    "train.loss": ("bce", "ce", "dice_ce"),
    "train.schedule": ("constant", "cosine"),
    "train.stem_init": ("random", "average"),
    "train.norm": NORMS,
    "train.amp": ("auto", True, False),
    "evaluate.csf_border": CSF_BORDERS,
}


def load_params(path="params.yaml"):
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ParamsError(f"{path}: cannot read parameters ({e})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of parameters")
    if params.get("model") not in MODELS:
        raise ParamsError(f"{path}: model must be one of {MODELS}, got {params.get('model')!r}")
    data = params.get("data")
    if isinstance(data, dict) and isinstance(data.get("skull_strip"), bool):  # YAML reads a bare no as False
        data["skull_strip"] = "yes" if data["skull_strip"] else "no"
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = params.get(section, {}).get(name)
        if value is not None:  # absent: the code's default
            check_choice(path, key, value, allowed)
    whole = lambda v: isinstance(v, int) and v >= 0
    number = lambda v: isinstance(v, (int, float)) and v >= 0
    check_value(params, path, "train.context", 0, whole, "a whole number >= 0", "neighbouring slices each side")
    check_value(params, path, "train.width", 16, lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1",
                "the UNet's first-stage channels")
    check_value(params, path, "train.bias_field", 0.0, lambda v: number(v) and v <= 5,
                "a number from 0 to 5", "strength of the augmentation's intensity field; 0 = none")
    check_value(params, path, "train.synth", 0.0, lambda v: number(v) and v <= 1, "a number from 0 to 1",
                "share of training samples synthesised from their labels; 0 = none")
    check_value(params, path, "train.synth_atlas", 0.0, lambda v: number(v) and v <= 1, "a number from 0 to 1",
                "share of synthetic samples drawn from the MNI152 tissue maps; 0 = none")
    check_value(params, path, "train.thinning", 0.0, lambda v: number(v) and v <= 1, "a number from 0 to 1",
                "share of training samples whose outer cortex is thinned to CSF; 0 = none")
    check_value(params, path, "train.bn_refit", False, lambda v: isinstance(v, bool), "true or false",
                "with train.synth: BatchNorm statistics re-estimated on the real training slices after training")
    check_value(params, path, "train.processes", 1, lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1",
                "processes training together under torchrun, one per GPU")
    check_value(params, path, "train.workers", "auto", lambda v: v == "auto" or whole(v), "auto or a whole number >= 0",
                "DataLoader worker processes")
    check_value(params, path, "train.device_cache_gb", 0, number, "a number >= 0", "GB of splits held on the device")
    check_value(params, path, "split.folds", 0, lambda v: whole(v) and v != 1, "0 or a whole number >= 2",
                "0 = one test side of split.test_size, K = K-fold cross-validation")
    check_value(params, path, "split.fold", 0, whole, "a whole number >= 0", "the fold held out for testing")
    check_value(params, path, "data.pixel_size", 1.0, number, "a number >= 0", "in-plane mm; 0 keeps the voxels")
    check_value(params, path, "data.min_tissue", 100, whole, "a whole number >= 0", "tissue pixels of a trained slice")
    check_value(params, path, "data.max_volume_mb", 1024, lambda v: number(v) and v > 0, "a number > 0",
                "largest volume accepted")
    check_norm(params, path, params.get("train", {}), "train.norm")
    check_views(params, path)
    labels = params.get("data", {}).get("labels", "ibsr")
    try:
        parse_labels(str(labels))
    except SourceError as e:
        raise ParamsError(f"{path}: data.labels: {e}") from None
    return params


def check_views(params, path):
    """views: a mapping of planes to changes of train settings; aggregate.weights: a number >= 0 per view."""
    views = params.setdefault("views", {"axial": {}})
    if not isinstance(views, dict) or not views or any(v not in VIEWS for v in views):
        raise ParamsError(f"{path}: views must map one or more of {VIEWS} to their changes of train ({{}} for "
                         f"none), got {views!r}")
    for view, changes in views.items():
        if changes is not None and not isinstance(changes, dict):
            raise ParamsError(f"{path}: views.{view} must be a mapping of train settings ({{}} for none), "
                             f"got {changes!r}")
        unknown = sorted(set(changes or {}) - set(params.get("train", {})))
        if unknown:
            raise ParamsError(f"{path}: views.{view}.{unknown[0]}: not a train setting")
        for name, value in (changes or {}).items():
            if f"train.{name}" in CHOICES:  # a view's null is refused: it would replace the train value
                check_choice(path, f"views.{view}.{name}", value, CHOICES[f"train.{name}"])
        check_norm(params, path, {**params.get("train", {}), **(changes or {})}, f"views.{view}.norm")
    weights = params.setdefault("aggregate", {}).setdefault("weights", {})
    bad = weights if not isinstance(weights, dict) else {
        v: w for v, w in weights.items()
        if v not in VIEWS or isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0}
    if bad:
        raise ParamsError(f"{path}: aggregate.weights must map views to numbers >= 0, got {bad!r}")


def check_choice(path, key, value, allowed):
    if value not in allowed:
        raise ParamsError(f"{path}: {key} must be one of {allowed}, got {value!r}")


def check_norm(params, path, train, key):
    """GroupNorm is the UNet's: the resnet keeps its pretrained BatchNorm."""
    if train.get("norm", "batch") != "batch" and params["model"] != "unet":
        raise ParamsError(f"{path}: {key} {train['norm']!r} needs model: unet (the resnet keeps its pretrained "
                          "BatchNorm)")


def check_value(params, path, key, default, is_valid, requirement, meaning):
    """One line naming the file and the key when <section>.<name> is not a value the pipeline can use."""
    section, name = key.split(".")
    value = params.get(section, {}).get(name, default)
    if isinstance(value, bool) != isinstance(default, bool) or not is_valid(value):  # YAML's true/false are ints
        raise ParamsError(f"{path}: {key} must be {requirement} ({meaning}), got {value!r}")
