"""The CPU runtime choices tfsft makes before TensorFlow loads, and that the test process runs with them."""

import subprocess
import sys

import pytest

from tfsft.runtime import CpuInfo, _onednn_choice, cpu_info


def cpu(*flags, machine="x86_64"):
    return CpuInfo(model="test CPU", flags=frozenset(flags), machine=machine)


@pytest.mark.parametrize(
    "info,expected",
    [
        (cpu("avx", "avx2", "fma"), "on"),  # AVX2-only: TF alone would stay on Eigen
        (cpu("avx2", "fma", "avx512f", "avx512bw"), "on"),  # AVX-512 without VNNI: likewise
        (cpu("avx", "sse4_2"), "TensorFlow's default"),  # no AVX2: leave TF alone
        (cpu("asimd", machine="aarch64"), "TensorFlow's default"),  # ARM: TF decides
    ],
)
def test_onednn_choice_by_cpu(info, expected):
    environ = {}
    choice = _onednn_choice(info, environ)
    assert choice.value == expected
    assert (environ.get("TF_ENABLE_ONEDNN_OPTS") == "1") == (expected == "on")
    assert choice.reason  # every choice says why


def test_the_reason_says_when_tensorflow_would_have_chosen_onednn_itself():
    sapphire_rapids = cpu("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
    assert _onednn_choice(sapphire_rapids, {}).reason == "TensorFlow's own default on this CPU (amx_tile avx512_vnni)"
    assert "Eigen" in _onednn_choice(cpu("avx2", "fma"), {}).reason


@pytest.mark.parametrize("value,expected", [("0", "off"), ("1", "on")])
def test_a_users_setting_wins(value, expected):
    environ = {"TF_ENABLE_ONEDNN_OPTS": value}
    choice = _onednn_choice(cpu("avx2", "fma"), environ)
    assert choice.value == expected and "set by you" in choice.reason
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": value}


def test_importing_tfsft_before_tensorflow_switches_onednn_on_for_avx2():
    if cpu_info().isa == "older" or cpu_info().machine != "x86_64":
        pytest.skip(f"the choice only applies to x86-64 AVX2 CPUs; this one is {cpu_info().describe()}")
    probe = (
        "import os; os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None); import tfsft, tensorflow; "
        "from tfsft.runtime import onednn_active; print('active', onednn_active())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert "active True" in out.stdout, out.stderr[-2000:]


def test_cpu_description_names_model_and_isa_flags():
    text = cpu("avx2", "fma", "avx512f", "amx_tile").describe()
    assert "test CPU" in text and "avx2" in text and "avx512f" in text and "amx_tile" in text
