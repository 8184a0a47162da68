import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from mriseg.models import (FlipAveraged, PretrainedWeightsUnavailable, UNet, UNetResNet, build_model, count_parameters,
                           pad_to)


def test_parameter_counts_match_the_recipe():
    # the tutorial's three classes; the CSF class adds one output channel to the head
    assert count_parameters(UNet(num_classes=3)) == 483_571
    assert count_parameters(UNetResNet(num_classes=3)) == 14_750_635
    assert count_parameters(UNet()) == 483_571 + 16 * 9 + 1  # a 3x3 kernel over 16 channels, and a bias


def test_unet_width_scales_every_stage():
    """train.width: channels width, 2x, 4x, 8x; parameters grow with its square (16 is the tutorial's)."""
    wide = build_model("unet", width=32, num_classes=3)
    assert count_parameters(wide) == 1_928_675
    assert wide.stem[0][0].out_channels == 32 and wide.down3.block[2][0].out_channels == 256
    with torch.no_grad():
        assert build_model("unet", width=8, in_channels=3).eval()(torch.randn(1, 3, 99, 131)).shape == (1, 4, 99, 131)


@pytest.mark.parametrize("name", ["unet", "resnet"])
@pytest.mark.parametrize("shape", [(394, 394), (99, 131), (64, 48)])
def test_output_has_input_size_on_odd_and_non_square_slices(name, shape):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 4, *shape)


def test_pad_to_pads_left_top_per_axis_and_crops_when_negative():
    x = torch.ones(1, 1, 4, 6)
    ref = torch.zeros(1, 1, 5, 9)
    y = pad_to(x, ref)
    assert y.shape == (1, 1, 5, 9)
    assert y[0, 0, 0].sum() == 0 and y[0, 0, :, :3].sum() == 0  # padding on top and left only
    assert y[0, 0, 1:, 3:].eq(1).all()
    assert pad_to(torch.ones(1, 1, 6, 8), torch.zeros(1, 1, 5, 7)).shape == (1, 1, 5, 7)


def _fake_imagenet_cache(torch_home):
    """A ResNet18 weights file where torchvision's weights API looks for it (TORCH_HOME/hub/checkpoints)."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    ckpt_dir = torch_home / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.manual_seed(123)
    state = resnet18().state_dict()
    torch.save(state, ckpt_dir / weights.url.rsplit("/", 1)[-1])
    return state


def test_pretrained_weights_load_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _fake_imagenet_cache(tmp_path)
    model = UNetResNet(pretrained=True, stem_init="average")
    assert torch.equal(model.encoder.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    # The 1-channel stem is the mean of the pretrained RGB kernels.
    assert torch.allclose(model.encoder.conv1.weight, state["conv1.weight"].mean(dim=1, keepdim=True))
    random_stem = UNetResNet(pretrained=True, stem_init="random")
    assert not torch.allclose(random_stem.encoder.conv1.weight, model.encoder.conv1.weight)
    # With neighbouring slices as channels (train.context=1) the mean is shared among them, so a stack of
    # three equal slices gives the 1-channel stem's response.
    stacked = UNetResNet(3, pretrained=True, stem_init="average")
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(stacked.encoder.conv1(x.expand(-1, 3, -1, -1)), model.encoder.conv1(x), atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "resnet"])
def test_context_channels(name):
    model = build_model(name, in_channels=5).eval()
    assert model(torch.rand(2, 5, 40, 48)).shape == (2, 4, 40, 48)


def test_pretrained_without_cache_offline_says_how_to_proceed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Route the download to a closed loopback port, so the test is offline wherever it runs.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        UNetResNet(pretrained=True)
    msg = str(err.value)
    assert "train.pretrained=false" in msg and str(tmp_path) in msg and "\n" not in msg


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_flip_averaged_prediction_is_mirror_symmetric_and_a_probability(activation):
    torch.manual_seed(0)
    net = UNet().eval()
    tta = FlipAveraged(net, activation)
    x = torch.rand(2, 1, 32, 24)
    with torch.no_grad():
        out, mirrored, plain = tta(x), tta(x.flip(-1)), net(x)
    # A mirrored slice gets the mirrored prediction, which the bare network does not guarantee.
    assert torch.allclose(mirrored, out.flip(-1), atol=1e-5)
    assert not torch.allclose(net(x.flip(-1)).detach(), plain.flip(-1), atol=1e-3)
    probs = out.exp() if activation == "softmax" else out.sigmoid()
    expected = (plain.softmax(1) + net(x.flip(-1)).flip(-1).softmax(1)) / 2 if activation == "softmax" else \
        (plain.sigmoid() + net(x.flip(-1)).flip(-1).sigmoid()) / 2
    assert torch.allclose(probs, expected.detach(), atol=1e-5)
