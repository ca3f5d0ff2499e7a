"""`pip install <checkout>` (not editable) carries the model, sample CT and Slicer resources.

Builds the wheel from a copy of the checkout in a temporary folder, installs it in a
fresh virtual environment (torch as the README's first command pins it, the other
dependencies from the package index), and segments the installed sample from another
working folder, with neither the checkout nor PYTHONPATH on the path.  About two
minutes, most of it installing torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from FusionLungSegLib.nets import weights as W

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not W.BUNDLED_SHA256, reason="no trained weights are bundled yet")]

_SKIP_PARTS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", "out", "runs"}


def _source_files(repo: Path) -> list[str]:
    """The checkout's files: git's tracked files, else everything but environments and build outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [
            str(p.relative_to(repo))
            for p in repo.rglob("*")
            if p.is_file()
            and not set(p.relative_to(repo).parts) & _SKIP_PARTS
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]
    return [f for f in files if (repo / f).is_file()]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd, cwd, timeout=900):
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    return r


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("pkg") / "FusionLungSeg"
    for rel in _source_files(REPO):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    return src


@pytest.fixture(scope="module")
def wheel(checkout_copy) -> Path:
    dist = checkout_copy.parent / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, checkout_copy], cwd=dist.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = dist.glob("fusionlungseg-*.whl")
    return whl


def readme_segment_torch_pin() -> str:
    """The torch pin of the README's first command (install and segment the sample), e.g. ``torch==2.13.0``."""
    for line in (REPO / "README.md").read_text().splitlines():
        if "fusionlungseg segment" in line and "pip install" in line:
            found = re.search(r"torch==[0-9][0-9.]*", line)
            assert found, f"the README's segment command pins no torch release: {line}"
            return found.group(0)
    raise AssertionError("README.md has no command that installs and runs `fusionlungseg segment`")


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "env"
    r = _run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    assert r.returncode == 0, r.stderr
    # A new user's install: torch as the README's first command pins it (the CPU build of about 1 GB, where this
    # environment may hold a 5 GB CUDA build for torchvision), the rest as pip resolves it.
    r = _run([_bin(venv, "python"), "-m", "pip", "install", "-q", readme_segment_torch_pin(), wheel], cwd=venv.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv


def test_wheel_carries_model_checksum_sample_and_slicer_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    resources = [f for f in _source_files(REPO) if f.startswith("Resources/")]
    assert "Resources/FusionLungNet.pt" in resources
    missing = [f for f in resources if f"FusionLungSegLib/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    info = zipfile.ZipFile(wheel).getinfo("FusionLungSegLib/Resources/FusionLungNet.pt")
    assert info.file_size == (REPO / "Resources" / "FusionLungNet.pt").stat().st_size
    size_mb = wheel.stat().st_size / 1e6
    print(f"wheel {wheel.name}: {size_mb:.1f} MB")
    assert 70 < size_mb < 100, "README states the wheel size: update it"


def test_sdist_carries_the_model_too(checkout_copy, tmp_path):
    pytest.importorskip("setuptools", reason="setuptools not installed in this environment")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    r = _run([sys.executable, "-c", code], cwd=checkout_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    import tarfile

    (sdist,) = tmp_path.glob("fusionlungseg-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for rel in ("Resources/FusionLungNet.pt", "Resources/FusionLungNet.pt.sha256", "Resources/UI/FusionLungSeg.ui"):
        assert rel in names, rel
    assert "Resources/Samples/lungmask_testdata/0.dcm" in names


def test_fresh_venv_segments_the_sample_from_another_folder(fresh_venv, tmp_path):
    python = _bin(fresh_venv, "python")
    probe = (
        "import json, sys, FusionLungSegLib\n"
        "from FusionLungSegLib.resources import resources_dir, sample_ct_path\n"
        "from FusionLungSegLib.nets.weights import bundled_weights_path\n"
        "print(json.dumps({'module': FusionLungSegLib.__file__, 'resources': str(resources_dir()),\n"
        "    'weights': str(bundled_weights_path()), 'sample': str(sample_ct_path()), 'path': sys.path}))\n"
    )
    r = _run([python, "-c", probe], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where = json.loads(r.stdout)
    site = Path(where["module"]).parent.parent
    assert "site-packages" in site.parts and str(REPO) not in where["module"]
    assert Path(where["resources"]) == site / "FusionLungSegLib" / "Resources"
    assert Path(where["weights"]).is_file() and Path(where["sample"]).is_dir()
    assert not [p for p in where["path"] if p and Path(p).resolve() == REPO.resolve()]

    r = _run(
        [
            _bin(fresh_venv, "fusionlungseg"),
            "segment",
            where["sample"],
            "lungs.seg.nrrd",
            "--dicom-seg",
            "lungs.dcm",
            "--device",
            "cpu",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["right_lung_ml"] > 5 and report["left_lung_ml"] > 5
    check = (
        "import json, slicerio, highdicom\n"
        "seg = slicerio.read_segmentation('lungs.seg.nrrd')\n"
        "dcm = highdicom.seg.segread('lungs.dcm')\n"
        "print(json.dumps({'segments': [{k: s[k] for k in ('id', 'name', 'labelValue', 'color', 'terminology')}\n"
        "    for s in seg['segments']], 'dicom_segments': [dcm.get_segment_description(n).segment_label\n"
        "    for n in dcm.get_segment_numbers()]}))\n"
    )
    r = _run([python, "-c", check], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    print(json.dumps(seen, indent=1))
    assert [(s["name"], s["labelValue"]) for s in seen["segments"]] == [("right lung", 1), ("left lung", 2)]
    assert [s["terminology"]["typeModifier"][1] for s in seen["segments"]] == ["24028007", "7771000"]
    assert all(s["terminology"]["type"][1] == "39607008" for s in seen["segments"])
    assert seen["dicom_segments"] == ["right lung", "left lung"]


def test_installed_without_package_data_names_the_cause(fresh_venv, tmp_path):
    r = _run([_bin(fresh_venv, "python"), "-c", "import FusionLungSegLib; print(FusionLungSegLib.__file__)"], tmp_path)
    resources = Path(r.stdout.strip()).parent / "Resources"
    hidden = resources.with_name("Resources.hidden")
    sample = tmp_path / "sample"
    shutil.copytree(resources / "Samples" / "lungmask_testdata", sample)
    resources.rename(hidden)
    try:
        r = _run([_bin(fresh_venv, "fusionlungseg"), "segment", sample, "o.nii.gz", "--device", "cpu"], tmp_path)
    finally:
        hidden.rename(resources)
    assert r.returncode == 2
    assert "installed without its package data" in r.stderr and "pip install --force-reinstall" in r.stderr


def test_editable_install_finds_the_checkout_resources(checkout_copy, tmp_path):
    """`pip install -e` of the checkout: Resources/ beside the package (its dependencies borrowed from here)."""
    import sysconfig

    venv = tmp_path / "env"
    assert _run([sys.executable, "-m", "venv", venv], cwd=tmp_path).returncode == 0
    r = _run([_bin(venv, "python"), "-m", "pip", "install", "-q", "--no-deps", "-e", checkout_copy], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = Path(
        _run(
            [_bin(venv, "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
        ).stdout.strip()
    )
    (site / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import FusionLungSegLib\n"
        "from FusionLungSegLib.nets.weights import bundled_weights_path\n"
        "print(FusionLungSegLib.__file__); print(bundled_weights_path())\n"
    )
    r = _run([_bin(venv, "python"), "-c", probe], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    module, weights = r.stdout.split()
    assert Path(module) == checkout_copy / "FusionLungSegLib" / "__init__.py"
    assert Path(weights) == checkout_copy / "Resources" / "FusionLungNet.pt"
