"""The device table (qwen2vl_jax.perf.devices): values, device-kind matching, overrides."""

import dataclasses

import pytest

from qwen2vl_jax.perf import devices as D

# device_kind as JAX reports it -> (short name, dense bf16 TFLOP/s, HBM GB/s, HBM GiB), from
# the vendors' datasheets / Cloud TPU docs (NVIDIA sparse headline numbers halved).
EXPECTED = {
    "TPU v4": ("v4", 275.0, 1200.0, 32.0),
    "TPU v5 lite": ("v5e", 197.0, 819.0, 16.0),
    "TPU v5e": ("v5e", 197.0, 819.0, 16.0),
    "TPU v5": ("v5p", 459.0, 2765.0, 95.0),
    "TPU v5p": ("v5p", 459.0, 2765.0, 95.0),
    "TPU v6 lite": ("v6e", 918.0, 1638.0, 32.0),
    "TPU v6e": ("v6e", 918.0, 1638.0, 32.0),
    "NVIDIA H100 80GB HBM3": ("h100", 989.0, 3350.0, 80.0),
    "NVIDIA H100 PCIe": ("h100-pcie", 756.0, 2000.0, 80.0),
    "NVIDIA H100 NVL": ("h100-nvl", 835.0, 3900.0, 94.0),
    "NVIDIA H200": ("h200", 989.0, 4800.0, 141.0),
    "NVIDIA H200 NVL": ("h200-nvl", 835.0, 4800.0, 141.0),
    "NVIDIA GH200 480GB": ("gh200", 989.0, 4000.0, 96.0),
    "NVIDIA GH200 144G HBM3e": ("gh200-144g", 989.0, 4900.0, 144.0),
    "NVIDIA A100-SXM4-80GB": ("a100", 312.0, 2039.0, 80.0),
    "NVIDIA A100-SXM4-40GB": ("a100-40g", 312.0, 1555.0, 40.0),
    "NVIDIA A100 80GB PCIe": ("a100-pcie", 312.0, 1935.0, 80.0),
    "NVIDIA A100-PCIE-40GB": ("a100-pcie-40g", 312.0, 1555.0, 40.0),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_table_entry(kind):
    name, peak, gbps, gib = EXPECTED[kind]
    spec = D.device_spec(kind)
    assert spec == D.DeviceSpec(name, peak, gbps, gib)
    assert D.peak_tflops_for(kind) == peak and D.hbm_gbps_for(kind) == gbps
    assert D.device_spec(name) is spec  # the short name gives the same entry


def test_table_has_no_untested_entries():
    assert {D.normalise_kind(k) for k in EXPECTED} == set(D.KINDS)
    assert {v[0] for v in EXPECTED.values()} == set(D.SPECS)


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        D.SPECS["h100"].hbm_gbps = 1.0


def test_kind_normalisation():
    assert D.device_spec("  nvidia   H200 ") is D.SPECS["h200"]
    assert D.device_spec("tpu V5 LITE") is D.SPECS["v5e"]


def test_gh200_never_resolves_to_h200():
    for kind in ("NVIDIA GH200 480GB", "NVIDIA GH200 144G HBM3e"):
        assert D.device_spec(kind).name.startswith("gh200")
    assert D.device_spec("NVIDIA GH200 480GB").hbm_gbps == 4000.0 != D.SPECS["h200"].hbm_gbps
    assert D.device_spec("NVIDIA GH200") is None  # which memory? ambiguous, not an H200
    assert D.device_spec("NVIDIA GH200 96GB HBM3") is None


def test_h200_nvl_is_not_h200():
    assert D.device_spec("NVIDIA H200 NVL").name == "h200-nvl"
    assert D.peak_tflops_for("NVIDIA H200 NVL") == 835.0 and D.peak_tflops_for("NVIDIA H200") == 989.0


def test_tpu_v5_lite_is_v5e_and_v5_is_v5p():
    assert D.device_spec("TPU v5 lite").name == "v5e" and D.device_spec("TPU v5").name == "v5p"


def test_fallback_only_adds_memory_words():
    # Whole-word prefix of a known kind followed by memory descriptors: the same chip.
    assert D.device_spec("NVIDIA H200 141GB HBM3e") is D.SPECS["h200"]
    assert D.device_spec("NVIDIA H100 NVL 94GB") is D.SPECS["h100-nvl"]
    # Any other word is another chip (or a slice of one): unknown.
    assert D.device_spec("TPU v4 lite") is None
    assert D.device_spec("NVIDIA A100-SXM4-40GB MIG 1g.5gb") is None
    assert D.device_spec("NVIDIA H2000") is None


def test_unknown_kinds():
    for kind in ("cpu", "Interpreter", "TPU v3", "NVIDIA H100", "", None):
        assert D.device_spec(kind) is None
        assert D.peak_tflops_for(kind) is None and D.hbm_gbps_for(kind) is None


def test_override_wins_and_must_be_positive():
    assert D.peak_tflops_for("cpu", 12.5) == 12.5 and D.peak_tflops_for("TPU v4", override=100) == 100.0
    assert D.hbm_gbps_for("cpu", 20) == 20.0 and D.hbm_gbps_for("NVIDIA H200", 1000.0) == 1000.0
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            D.peak_tflops_for("TPU v4", bad)
        with pytest.raises(ValueError, match="positive"):
            D.hbm_gbps_for("NVIDIA H200", bad)


def test_short_names():
    want = {"v5e": 197.0, "v5p": 459.0, "v4": 275.0, "v6e": 918.0, "h100": 989.0, "h200": 989.0}
    assert {n: D.device_spec(n).peak_bf16_tflops for n in want} == want
    assert D.device_spec("H100").hbm_gib == 80.0 and D.device_spec("h200").hbm_gib == 141.0


class _Dev:
    def __init__(self, kind):
        self.device_kind = kind


def test_detect_device():
    assert D.detect_device([_Dev("TPU v5 lite"), _Dev("TPU v5 lite")]) == ("TPU v5 lite", D.SPECS["v5e"])
    assert D.detect_device([]) == ("unknown", None)
    assert D.detect_peak_tflops(devices=[_Dev("NVIDIA H200")]) == ("NVIDIA H200", 989.0)
    assert D.detect_peak_tflops(7.0, devices=[_Dev("cpu")]) == ("cpu", 7.0)
    kind, spec = D.detect_device()  # this machine (CPU in the test run): not in the table
    assert isinstance(kind, str) and (spec is None or spec.peak_bf16_tflops > 0)
