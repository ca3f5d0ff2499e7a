"""Where the bundled files are found (wheel, checkout, Slicer extension) and what a missing model says."""

from __future__ import annotations

import pytest
from conftest import REPO

from FusionLungSegLib.nets import weights as W
from FusionLungSegLib.resources import PACKAGE_DIR, resource_path, resources_dir, sample_ct_path


def _package(root, *, resources_inside=False, resources_beside=False, checkout=False):
    pkg = root / "FusionLungSegLib"
    pkg.mkdir(parents=True)
    if resources_inside:
        (pkg / "Resources").mkdir()
    if resources_beside:
        (root / "Resources").mkdir()
    if checkout:
        (root / "pyproject.toml").write_text("[project]\n")
    return pkg


def test_this_checkout_finds_its_resources_and_sample():
    assert PACKAGE_DIR == (REPO / "FusionLungSegLib").resolve()
    assert resources_dir() == (REPO / "Resources").resolve()
    assert resource_path("UI", "FusionLungSeg.ui").is_file()
    assert sorted(p.name for p in sample_ct_path().glob("*.dcm")) == ["0.dcm", "1.dcm"]


def test_one_rule_for_wheel_checkout_and_slicer_extension(tmp_path):
    wheel = _package(tmp_path / "site-packages", resources_inside=True)
    assert resources_dir(wheel) == wheel / "Resources"
    slicer_ext = _package(tmp_path / "qt-scripted-modules", resources_beside=True)
    assert resources_dir(slicer_ext) == slicer_ext.parent / "Resources"
    checkout = _package(tmp_path / "checkout", resources_beside=True, checkout=True)
    assert resources_dir(checkout) == checkout.parent / "Resources"
    both = _package(tmp_path / "both", resources_inside=True, resources_beside=True)
    assert resources_dir(both) == both / "Resources"  # package data first
    bare = _package(tmp_path / "bare")
    assert resources_dir(bare) == bare / "Resources"  # where an install would put it, for messages


@pytest.mark.skipif(not W.BUNDLED_SHA256, reason="no trained weights are bundled yet")
def test_missing_model_names_the_cause_and_what_to_run(tmp_path):
    no_data = _package(tmp_path / "site-packages")
    with pytest.raises(W.WeightsError) as err:
        W.bundled_weights_path(no_data)
    msg = str(err.value)
    assert "installed without its package data" in msg and "pip install --force-reinstall" in msg
    assert "--weights PATH" in msg

    partial = _package(tmp_path / "partial", resources_inside=True)
    (partial / "Resources" / "MODEL_CARD.md").write_text("card")
    with pytest.raises(W.WeightsError, match=r"holds MODEL_CARD\.md.*package data is incomplete"):
        W.bundled_weights_path(partial)

    checkout = _package(tmp_path / "checkout", resources_beside=True, checkout=True)
    with pytest.raises(W.WeightsError, match=r"source checkout.*git checkout -- Resources/FusionLungNet\.pt"):
        W.bundled_weights_path(checkout)

    (checkout.parent / "Resources" / W.BUNDLED_WEIGHTS).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 92046859\n"
    )
    with pytest.raises(W.WeightsError, match="Git LFS pointer"):
        W.bundled_weights_path(checkout)
