"""The two networks of the reference recipe: a plain UNet and a UNet with a ResNet18 encoder."""
import math
import urllib.error
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from . import first_line
from .errors import MrisegError
from .params import MODELS

NUM_CLASSES = 4  # 0 white matter, 1 gray matter, 2 background, 3 CSF (three: a model without the CSF class)


def conv3x3_bn(ci, co, norm="batch"):
    # GroupNorm (8 groups) normalises each sample by itself: no batch statistics shared between real and
    # synthetic samples, none carried to prediction.
    layer = nn.BatchNorm2d(co) if norm == "batch" else nn.GroupNorm(math.gcd(8, co), co)
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), layer, nn.ReLU(inplace=True))


def pad_to(x, ref):
    """Zero-pad x on the left/top (crop when negative) so its H, W match ref's."""
    dh = ref.shape[2] - x.shape[2]
    dw = ref.shape[3] - x.shape[3]
    # F.pad takes (left, right, top, bottom): width first, then height (the tutorial swapped them).
    return F.pad(x, (dw, 0, dh, 0))


class Down(nn.Module):
    def __init__(self, ci, co, norm="batch"):
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), conv3x3_bn(ci, co, norm), conv3x3_bn(co, co, norm))

    def forward(self, x):
        return self.block(x)


class Up(nn.Module):
    """Upsample, pad to the skip's size, concatenate [skip, up], two convolutions."""

    def __init__(self, ci, co, norm="batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(ci, co, 2, stride=2)
        self.conv = nn.Sequential(conv3x3_bn(ci, co, norm), conv3x3_bn(co, co, norm))

    def forward(self, x, skip):
        x = pad_to(self.up(x), skip)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The tutorial's UNet at width 16: channels width, 2x, 4x, 8x down the encoder. norm: params.NORMS."""

    def __init__(self, in_channels=1, num_classes=NUM_CLASSES, width=16, norm="batch"):
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 8 * width
        self.stem = nn.Sequential(conv3x3_bn(in_channels, c1, norm), conv3x3_bn(c1, c1, norm))
        self.down1, self.down2, self.down3 = Down(c1, c2, norm), Down(c2, c3, norm), Down(c3, c4, norm)
        self.up1, self.up2, self.up3 = Up(c4, c3, norm), Up(c3, c2, norm), Up(c2, c1, norm)
        self.head = nn.Conv2d(c1, num_classes, 3, padding=1)

    def forward(self, x):
        x1 = self.stem(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.down3(x3)
        x = self.up1(x, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        return self.head(x)


class PretrainedWeightsUnavailable(MrisegError):
    pass


def imagenet_resnet18():
    """ResNet18 with ImageNet weights through torchvision's weights API (cached under TORCH_HOME)."""
    from torchvision.models import ResNet18_Weights, resnet18

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return resnet18(weights=weights)
    except (urllib.error.URLError, OSError) as e:
        cache = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise PretrainedWeightsUnavailable(
            f"cannot get ImageNet ResNet18 weights ({e}): train without them with "
            f"`-S train.pretrained=false`, or download {weights.url} and place it at {cache}"
        ) from e


class UNetResNet(nn.Module):
    """UNet decoder on a ResNet18 encoder (conv1 -> bn1 -> relu -> layer1..4, no max-pool)."""

    def __init__(self, in_channels=1, num_classes=NUM_CLASSES, pretrained=False, stem_init="random"):
        super().__init__()
        from torchvision.models import resnet18  # imported here: a 2-3 s start that only the ResNet needs

        encoder = imagenet_resnet18() if pretrained else resnet18(weights=None)
        rgb_conv1 = encoder.conv1.weight.detach()
        encoder.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if pretrained and stem_init == "average":
            # Keep what the pretrained stem learned: average its RGB kernels into the input channels
            # (divided among them, so a stack of near-identical neighbouring slices gives the same response).
            with torch.no_grad():
                mean = rgb_conv1.mean(dim=1, keepdim=True) / in_channels
                encoder.conv1.weight.copy_(mean.expand(-1, in_channels, -1, -1))
        # The whole torchvision ResNet stays a submodule, as in the recipe: its unused fc head
        # (513,000 parameters) is part of the specified 14,750,635 and of the checkpoint layout.
        self.encoder = encoder
        self.up1, self.up2, self.up3 = Up(512, 256), Up(256, 128), Up(128, 64)
        self.final_up = nn.ConvTranspose2d(64, 64, 2, stride=2)
        self.final_conv = conv3x3_bn(64, 64)
        self.head = nn.Conv2d(64, num_classes, 1)

    def forward(self, x):
        e = self.encoder
        x1 = e.layer1(e.relu(e.bn1(e.conv1(x))))  # 64, 1/2 (no max-pool)
        x2 = e.layer2(x1)  # 128, 1/4
        x3 = e.layer3(x2)  # 256, 1/8
        y = e.layer4(x3)  # 512, 1/16
        y = self.up1(y, x3)
        y = self.up2(y, x2)
        y = self.up3(y, x1)
        y = pad_to(self.final_up(y), x)  # the input only gives the target size
        return self.head(self.final_conv(y))


def build_model(name, pretrained=False, stem_init="random", in_channels=1, width=16, num_classes=NUM_CLASSES,
                norm="batch"):
    """in_channels = 2 * train.context + 1: the slice and its neighbours. width and norm: the UNet's
    (train.width, train.norm). num_classes: 4 with CSF, 3 without (the tutorial's slices, data.csf: none)."""
    if name == "unet":
        return UNet(in_channels, num_classes, width=width, norm=norm)
    if norm != "batch":
        raise ValueError(f"train.norm {norm!r}: only the unet has it (the resnet keeps its pretrained BatchNorm)")
    if name == "resnet":
        return UNetResNet(in_channels, num_classes, pretrained=pretrained, stem_init=stem_init)
    raise ValueError(f"params.yaml: model must be one of {MODELS}, got {name!r}")


class FlipAveraged(nn.Module):
    """Test-time augmentation: the mean class probabilities of a slice and of its left-right mirror.

    Returns them as logits of the same kind as the network's (log-probabilities for softmax, log-odds for
    sigmoid), so argmax, the tutorial IoU and the losses apply unchanged. Mirrors the last image axis, the
    one `train.augment` flips.
    """

    def __init__(self, net, activation):
        super().__init__()
        self.net, self.activation = net, activation

    def forward(self, x):
        a, b = self.net(x).float(), self.net(x.flip(-1)).float().flip(-1)
        if self.activation == "sigmoid":
            return torch.logit((a.sigmoid() + b.sigmoid()) / 2, eps=1e-6)
        return torch.logaddexp(a.log_softmax(dim=1), b.log_softmax(dim=1)) - math.log(2)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# The model shipped with the package (three views trained on IBSR18's 10 subjects; shipped/MODEL.md):
# what `mriseg predict` uses without --model.
SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped" / "ibsr18-3views.pt"


class CheckpointError(MrisegError):
    pass


CHECKPOINT_KEYS = ("model", "state_dict", "normalization", "axis", "activation")


def read_checkpoint(path, device="cpu"):
    """The checkpoint's dict, loaded with weights_only=True (no pickle code): one network, or a bundle of
    views ({"views": {view: checkpoint}, "weights": {view: weight}}, written by the bundle stage)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint (train a model with `dvc repro`)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable mriseg checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an mriseg checkpoint")
    return ckpt


def build_network(ckpt, path, device="cpu"):
    """The network one checkpoint dict describes, with its weights, in eval mode."""
    if any(k not in ckpt for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
        raise CheckpointError(f"{path}: not an mriseg checkpoint (missing {', '.join(missing)})")
    if ckpt["model"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {ckpt['model']!r}")
    # Architecture only: the weights come from the checkpoint.
    model = build_model(ckpt["model"], in_channels=2 * int(ckpt.get("context", 0)) + 1,
                        width=int(ckpt.get("width", 16)), num_classes=len(ckpt.get("classes", range(3))),
                        norm=ckpt.get("norm", "batch"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {ckpt['model']} network ({first_line(e)})") from None
    if ckpt.get("flip_tta"):
        model = FlipAveraged(model, ckpt["activation"])
    return model.to(device, memory_format=torch.channels_last).eval()


def load_views(path, device="cpu"):
    """[(view, network, its checkpoint dict, weight)]: every view of a bundle, or a single network as one
    view of weight 1."""
    ckpt = read_checkpoint(path, device)
    if "views" not in ckpt:
        return [(ckpt.get("axis", "axial"), build_network(ckpt, path, device), ckpt, 1.0)]
    views, weights = ckpt["views"], ckpt.get("weights", {})
    if not isinstance(views, dict) or not views:
        raise CheckpointError(f"{path}: a bundle without views")
    return [(view, build_network(sub, f"{path} ({view})", device), sub, float(weights.get(view, 1.0)))
            for view, sub in views.items()]


def load_checkpoint(path, device="cpu"):
    """(network, checkpoint dict) of one network; of a bundle's first view."""
    view, model, ckpt, _ = load_views(path, device)[0]
    return model, ckpt


SHARED_RULES = ("normalization", "pixel_size_mm", "grid", "classes")


def bundle_views(paths, weights, out_path):
    """{view: checkpoint path} + {view: weight} -> one file holding every view (see load_views). The views
    must share the rules that make one working volume for all of them."""
    from .io import save_torch

    views = {}
    for view, path in paths.items():
        ckpt = read_checkpoint(path)
        build_network(ckpt, path)  # fails here, not at prediction, on weights that do not fit
        first = next(iter(views.values()), ckpt)
        for key in SHARED_RULES:
            if ckpt.get(key) != first.get(key):
                raise CheckpointError(f"{path}: {key} {ckpt.get(key)!r} differs from the other views' "
                                      f"{first.get(key)!r}: retrain the views on one archive")
        views[view] = ckpt
    weights = {view: float(weights.get(view, 1.0)) for view in views}
    if not views or sum(weights.values()) <= 0:
        raise CheckpointError(f"{out_path}: no view to bundle, or weights summing to 0 ({weights})")
    save_torch({"format": 2, "views": views, "weights": weights}, out_path)
