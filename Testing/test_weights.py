"""Weights files: bundled checksum, sha256 check, weights_only loading, clear errors."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from FusionLungSegLib.nets import weights as W
from FusionLungSegLib.nets.weights import WeightsError, load_weights, sha256_of
from FusionLungSegLib.segmenter import LungSegmenter


def test_bundled_weights_match_their_recorded_sha256_or_absence_is_explained():
    path = W.resources_dir() / W.BUNDLED_WEIGHTS
    if W.BUNDLED_SHA256:
        assert path.is_file(), f"BUNDLED_SHA256 is set but {path} is missing"
        assert sha256_of(path) == W.BUNDLED_SHA256
        assert path.stat().st_size <= 95 * 1024 * 1024
        state, meta = load_weights()
        assert meta["input_size"] % 32 == 0
        # the file names its version and the size it runs at, within the sizes it was trained at
        assert meta["version"].startswith("FusionLungNet ")
        assert meta["min_input_size"] <= meta["default_input_size"] <= meta["input_size"]
    else:
        with pytest.raises(WeightsError, match="no trained FusionLungNet weights are bundled"):
            load_weights()


def test_model_name_is_the_recorded_version_or_what_the_metadata_says():
    assert W.model_name({"version": "FusionLungNet 0.4.0", "input_size": 320, "epochs": 6}) == "FusionLungNet 0.4.0"
    assert W.model_name({"input_size": 224, "epochs": 6}) == "FusionLungNet 224px 6 epochs"
    assert W.model_name({"architecture": "UNet", "input_size": 160}) == "UNet 160px"
    assert W.model_name(None) == "FusionLungNet"


def test_sha256_mismatch_is_refused(random_weights, tmp_path):
    good = sha256_of(random_weights)
    tampered = tmp_path / "tampered.pt"
    shutil.copy(random_weights, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_weights(tampered, sha256=good)
    load_weights(random_weights, sha256=good)  # the original passes


def test_truncated_and_missing_files_are_clear_errors(random_weights, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(random_weights.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        load_weights(cut)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.pt")


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_weights(path)


def test_wrong_network_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, path)
    with pytest.raises(WeightsError, match="does not fit FusionLungNet"):
        LungSegmenter(weights=path, device="cpu", progress=False)


def test_an_input_size_the_weights_were_not_trained_at_gives_a_warning(random_weights):
    with pytest.warns(UserWarning, match="trained at 64 px input, not 128 px"):
        LungSegmenter(random_weights, device="cpu", input_size=128, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LungSegmenter(random_weights, device="cpu", progress=False).input_size == 64


def test_default_batch_size_shrinks_with_input_size_on_cpu():
    from FusionLungSegLib.segmenter import default_batch_size

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [default_batch_size(cpu, s) for s in (64, 160, 224, 320, 512)] == [8, 4, 2, 1, 1]
    assert default_batch_size(cuda, 320) == 32
