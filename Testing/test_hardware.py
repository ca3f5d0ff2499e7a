"""CPU model and bf16 units from /proc/cpuinfo or lscpu text, and the precision 'auto' picks."""

from __future__ import annotations

import warnings

import pytest
import torch

from FusionLungSegLib.engines import hardware

AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse4_2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: some other name
flags\t\t: fpu
"""

EPYC_LSCPU = """Architecture:            x86_64
Vendor ID:               AuthenticAMD
Model name:              AMD EPYC 7B13
Flags:                   fpu vme sse4_2 avx avx2 fma sha_ni vaes
"""

GRAVITON_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_reads_the_first_processor():
    name, flags = hardware.parse_cpuinfo(AMX_CPUINFO)
    assert name == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= flags and "fpu" in flags


def test_parse_lscpu():
    name, flags = hardware.parse_lscpu(EPYC_LSCPU)
    assert name == "AMD EPYC 7B13" and "avx2" in flags and not flags & set(hardware.BF16_MATRIX_FLAGS)


def test_arm_features_without_a_model_name():
    name, flags = hardware.parse_cpuinfo(GRAVITON_CPUINFO)
    assert name is None and "asimd" in flags


def test_cpu_info_of_this_machine_is_complete():
    info = hardware.cpu_info()
    assert set(info) == {"name", "cores", "arch", "isa", "bf16_flags", "bf16_matrix_units", "source"}
    assert info["name"] and info["cores"] >= 1
    assert info["bf16_matrix_units"] == bool(info["bf16_flags"])
    assert set(info["bf16_flags"]) <= set(hardware.BF16_MATRIX_FLAGS)
    line = hardware.describe_cpu(info)
    assert info["name"] in line and "bf16 matrix units" in line


def _fake_cpu(monkeypatch, text):
    name, flags = hardware.parse_cpuinfo(text)
    monkeypatch.setattr(hardware, "_read_cpu", lambda: (name, flags, "/proc/cpuinfo"))
    hardware.cpu_info.cache_clear()
    return hardware.cpu_info()


@pytest.fixture(autouse=True)
def _fresh_cache():
    hardware.cpu_info.cache_clear()
    yield
    hardware.cpu_info.cache_clear()


def test_auto_is_bf16_on_a_cpu_with_amx(monkeypatch):
    info = _fake_cpu(monkeypatch, AMX_CPUINFO)
    assert info["bf16_flags"] == ["amx_bf16", "avx512_bf16"] and info["isa"] == "avx512f"
    assert "bf16 matrix units (amx_bf16, avx512_bf16)" in hardware.describe_cpu(info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("auto", "cpu") == "bf16"
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"
        assert hardware.resolve_precision("fp32", "cpu") == "fp32"


def test_auto_is_fp32_without_units_and_explicit_bf16_warns(monkeypatch):
    name, flags = hardware.parse_lscpu(EPYC_LSCPU)
    monkeypatch.setattr(hardware, "_read_cpu", lambda: (name, flags, "lscpu"))
    assert hardware.cpu_info()["isa"] == "avx2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("auto", torch.device("cpu")) == "fp32"
        assert hardware.resolve_precision(None, "cpu") == "fp32"
    with pytest.warns(UserWarning, match="AMD EPYC 7B13.*slower than fp32"):
        assert hardware.resolve_precision("BF16", "cpu") == "bf16"


def test_cuda_auto_is_bf16_when_the_gpu_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", "cuda") == "bf16"
    assert hardware.resolve_precision("fp32", "cuda:0") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", "cuda") == "fp32"


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        hardware.resolve_precision("fp16", "cpu")
