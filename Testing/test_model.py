"""FusionLungNet shapes, parameter count and encoder-weight loading."""

from __future__ import annotations

import pytest
import torch

from FusionLungSegLib.nets.fusionlungnet import (
    ChannelAggregationAttention,
    FusionLungNet,
    MultiScaleFeatureFusion,
    ResidualRefinement,
    ResNet50Encoder,
    SelfRefinement,
    load_encoder_weights,
)
from FusionLungSegLib.nets.registry import count_parameters

PAPER_PARAMETERS = 46.1e6


@pytest.fixture(scope="module")
def net() -> FusionLungNet:
    torch.manual_seed(0)
    return FusionLungNet().eval()


def test_parameter_count_within_2_percent_of_paper(net):
    n = count_parameters(net)
    assert abs(n / PAPER_PARAMETERS - 1) < 0.02, n
    # The encoder is a plain ResNet-50 trunk (23.5 M without the classifier).
    assert 23.4e6 < count_parameters(net.encoder) < 23.6e6


@pytest.mark.parametrize("size", [64, 96])
def test_forward_returns_refined_then_four_sides_at_input_size(net, size):
    x = torch.rand(2, 1, size, size)
    with torch.inference_mode():
        out = net(x)
    assert len(out) == 5
    for o in out:
        assert o.shape == (2, 1, size, size)
        assert torch.isfinite(o).all()


def test_encoder_feature_pyramid():
    enc = ResNet50Encoder()
    with torch.inference_mode():
        feats = enc.eval()(torch.rand(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def test_blocks_keep_their_contracts():
    x = torch.rand(2, 2048, 2, 2)
    caa = ChannelAggregationAttention(2048, 32).eval()
    assert caa(x).shape == (2, 32, 2, 2)
    mff = MultiScaleFeatureFusion((32, 16, 8), 24).eval()
    y = mff(torch.rand(2, 32, 4, 4), torch.rand(2, 16, 8, 8), torch.rand(2, 8, 2, 2))
    assert y.shape == (2, 24, 8, 8)
    sr = SelfRefinement(24, 24).eval()
    assert (sr(y) >= 0).all()  # relu(w * F + b)
    rrm = ResidualRefinement(8).eval()
    coarse = torch.rand(2, 1, 37, 37)  # odd size survives 4 poolings
    assert rrm(coarse).shape == coarse.shape


def test_rrm_output_is_coarse_plus_residual():
    rrm = ResidualRefinement(8).eval()
    torch.nn.init.zeros_(rrm.head.weight)
    torch.nn.init.zeros_(rrm.head.bias)
    coarse = torch.randn(1, 1, 32, 32)
    assert torch.equal(rrm(coarse), coarse)


def test_load_torchvision_style_rgb_encoder_weights(tmp_path):
    """An ImageNet-style (3-channel conv1, with fc) ResNet-50 file loads into the 1-channel encoder."""
    src = ResNet50Encoder(in_channels=3)
    state = {k: v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    enc = ResNet50Encoder(in_channels=1)
    missing = load_encoder_weights(enc, path)
    assert missing == []
    assert torch.allclose(enc.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(enc.layer4[2].conv3.weight, src.layer4[2].conv3.weight)


def test_load_encoder_weights_refuses_other_networks(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"decoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a ResNet-50"):
        load_encoder_weights(ResNet50Encoder(), path)
