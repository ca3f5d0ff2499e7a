"""ResNet encoders from torchvision's constructors, and the built-in copy used without torchvision."""

from __future__ import annotations

import pytest
import torch

from FusionLungSegLib.nets import encoders
from FusionLungSegLib.nets.baselines import ResNet18Encoder
from FusionLungSegLib.nets.fusionlungnet import ResNet50Encoder
from FusionLungSegLib.nets.registry import build_model

needs_torchvision = pytest.mark.skipif(
    not encoders.torchvision_available(),
    reason="torchvision is not installed (the README's test command installs it: torch==2.14.1 torchvision==0.29.1)",
)


@needs_torchvision
@pytest.mark.parametrize("encoder_class", [ResNet50Encoder, ResNet18Encoder])
def test_torchvision_and_builtin_encoders_have_the_same_keys_and_compute_the_same(encoder_class):
    tv, builtin = encoder_class(torchvision=True).eval(), encoder_class(torchvision=False).eval()
    assert type(tv.layer1[0]).__module__.startswith("torchvision")
    assert type(builtin.layer1[0]).__module__.startswith("FusionLungSegLib")
    tv_state, builtin_state = tv.state_dict(), builtin.state_dict()
    assert list(tv_state) == list(builtin_state)
    assert all(tv_state[k].shape == builtin_state[k].shape for k in tv_state)
    assert tv.conv1.in_channels == 1 and not hasattr(tv, "fc")
    builtin.load_state_dict(tv_state)  # strict
    x = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        for a, b in zip(tv(x), builtin(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_torchvision
def test_models_take_torchvision_trunks_by_default_and_the_bundled_file_loads_into_them():
    from FusionLungSegLib.nets.weights import load_weights

    state, meta = load_weights(None)
    model = build_model(meta["architecture"])
    assert type(model.encoder.layer4[0]).__module__ == "torchvision.models.resnet"
    model.load_state_dict(state)  # strict: the bundled key names and shapes, unchanged
    assert type(build_model("ResUNet-18").encoder.layer1[0]).__module__ == "torchvision.models.resnet"


def test_builtin_trunk_can_be_chosen_and_a_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FUSIONLUNGSEG_RESNET", "builtin")
    assert type(ResNet18Encoder().layer1[0]).__module__ == "FusionLungSegLib.nets.baselines"
    monkeypatch.setenv("FUSIONLUNGSEG_RESNET", "keras")
    with pytest.raises(ValueError, match="must be 'torchvision' or 'builtin'"):
        encoders.use_torchvision()
    monkeypatch.delenv("FUSIONLUNGSEG_RESNET")
    assert encoders.use_torchvision() == encoders.torchvision_available()
    assert encoders.use_torchvision(False) is False


def test_asking_for_torchvision_without_it_says_what_to_install(monkeypatch):
    monkeypatch.setattr(encoders, "torchvision_available", lambda: False)
    with pytest.raises(ImportError, match="pip install torchvision"):
        ResNet50Encoder(torchvision=True)
