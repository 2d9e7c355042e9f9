"""Per-stage CPU paths chosen from the CPU's features: bf16 only where it runs in hardware, the exported
encoder's runtime by what is installed, today's path untouched; oneDNN's ISA cap honoured."""
import pytest

from MedCLIPSAMLib.models import cpu_features
from MedCLIPSAMLib.models.cpu_features import CpuFeatures, capped
from MedCLIPSAMLib.models.cpu_paths import OPENVINO, ONNXRUNTIME, PATH_STAGES, TORCH, plan_cpu_paths

AMX = CpuFeatures(amx=True, avx512_bf16=True, avx512=True, avx2=True, vnni=True)
ZEN5 = CpuFeatures(avx512_bf16=True, avx512=True, avx2=True, vnni=True)  # AMD EPYC: AVX512-BF16, no AMX
SKYLAKE = CpuFeatures(avx512=True, avx2=True)
LAPTOP = CpuFeatures(avx2=True)
APPLE = CpuFeatures()  # arm64: none of the x86 sets


@pytest.mark.parametrize("features, m2ib", [(AMX, "bf16"), (ZEN5, "bf16"), (SKYLAKE, "fp32"), (LAPTOP, "fp32"),
                                            (APPLE, "fp32")])
def test_m2ib_runs_in_bf16_exactly_where_the_cpu_multiplies_bf16_natively(features, m2ib):
    plan = plan_cpu_paths(features)
    assert set(plan) == set(PATH_STAGES)
    assert plan["m2ib"].runtime == TORCH and plan["m2ib"].precision == m2ib
    assert features.level in plan["m2ib"].reason
    assert plan["clip_features"].label == "PyTorch fp32" and plan["sam_decoder"].label == "PyTorch fp32"
    assert plan["sam_encoder"].label == "OpenVINO fp32", "the encoder's default stays exact on every CPU"


def test_fp32_switch_and_todays_path_never_take_bf16():
    assert plan_cpu_paths(AMX, bf16=False)["m2ib"].label == "PyTorch fp32"
    today = plan_cpu_paths(AMX, runtime="torch", sam_encoder_bf16=True)
    assert {path.label for path in today.values()} == {"PyTorch fp32"}


@pytest.mark.parametrize("features, precision", [(AMX, "bf16"), (ZEN5, "bf16"), (SKYLAKE, "fp32"), (LAPTOP, "fp32")])
def test_the_opt_in_bf16_encoder_only_with_native_bf16(features, precision):
    path = plan_cpu_paths(features, sam_encoder_bf16=True)["sam_encoder"]
    assert path.runtime == OPENVINO and path.precision == precision
    assert ("emulated" in path.reason) is (precision == "fp32")


def test_the_encoder_runtime_follows_what_is_installed_and_the_backend():
    assert plan_cpu_paths(ZEN5, openvino=False)["sam_encoder"].runtime == ONNXRUNTIME
    assert plan_cpu_paths(ZEN5, openvino=False, onnxruntime=False)["sam_encoder"].label == "PyTorch fp32"
    vit = plan_cpu_paths(ZEN5, sam_backend="vit_b")["sam_encoder"]
    assert vit.label == "PyTorch fp32" and "vit_b is not exported" in vit.reason


@pytest.mark.parametrize("cap, expected", [
    ("", ZEN5), ("ALL", ZEN5), ("default", ZEN5), ("not-an-isa", ZEN5),
    ("AVX512_CORE_BF16", ZEN5),
    ("AVX512_CORE_VNNI", CpuFeatures(avx512=True, avx2=True, vnni=True)),
    ("AVX512_CORE", CpuFeatures(avx512=True, avx2=True)),
    ("AVX2", CpuFeatures(avx2=True)),
    ("SSE41", CpuFeatures()),
])
def test_an_isa_cap_hides_the_features_above_it(cap, expected):
    assert capped(ZEN5, cap) == expected
    assert capped(AMX, "AVX512_CORE_BF16") == ZEN5


def test_level_and_summary_name_the_features():
    assert AMX.level == "AMX" and ZEN5.level == "AVX-512 with BF16 (no AMX)" and LAPTOP.level == "AVX2"
    assert ZEN5.summary() == "AMX no, AVX512-BF16 yes, AVX-512 yes, AVX2 yes, VNNI yes"
    assert ZEN5.native_bf16 and AMX.native_bf16 and not SKYLAKE.native_bf16 and not APPLE.native_bf16


def test_detect_reads_torch_probes_within_the_environment_cap(monkeypatch):
    import torch

    cpu_features.detect.cache_clear()
    try:
        found = cpu_features.detect()
        probe = getattr(torch.cpu, "_is_avx2_supported", None)
        if probe is not None:
            assert found.avx2 == bool(probe())
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        cpu_features.detect.cache_clear()
        assert not cpu_features.detect().native_bf16 and not cpu_features.amx_bf16_available()
    finally:
        monkeypatch.undo()
        cpu_features.detect.cache_clear()
