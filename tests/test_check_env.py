"""`radixmesh check-env`: runs anywhere (here: a CPU machine), lists what is there, says what
is missing for which flag, never prints a secret, and stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radixmesh.check_env import Gpu, Report, missing_features
from radixmesh.cli import main


def run(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    assert main(["check-env", *flags]) == 0
    return capsys.readouterr().out


def test_plain_text_lists_versions_gpus_and_what_is_missing(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys)

    for heading in ("Python", "Packages", "CUDA", "GPUs", "Tools", "Environment",
                    "Missing, and what it costs"):
        assert heading in text
    assert "torch  " in text and torch.__version__ in text
    assert sys.version.split()[0] in text
    if not torch.cuda.is_available():
        assert "a CUDA device: --device cuda" in text
        assert "--quantization fp8 runs dequantized GEMMs" in text


def test_json_is_one_object_with_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    report = json.loads(run(capsys, "--json"))

    assert set(report) == {"python", "platform", "packages", "cuda", "gpus", "tools",
                           "environment", "missing"}
    assert report["packages"]["torch"] == torch.__version__
    assert report["packages"]["grpcio"] and report["packages"]["transformers"]
    assert "redis" in report["packages"] and "redis-server" in report["tools"]
    assert len(report["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(set(item) == {"missing", "affects"} for item in report["missing"])


def test_a_token_is_reported_as_set_never_shown(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print_me")

    text, data = run(capsys), json.loads(run(capsys, "--json"))

    assert "hf_do_not_print_me" not in text + json.dumps(data)
    assert data["environment"]["HF_TOKEN"] == "set"


def report_with(gpus: list[Gpu], **packages: str | None) -> Report:
    names = ("torch", "triton", "flashinfer", "huggingface_hub", "opentelemetry-sdk",
             "opentelemetry-exporter-otlp", "redis")
    return Report(python="3", platform="x", cuda={},
                  packages={name: "1.0" for name in names} | packages, gpus=gpus,
                  tools={"redis-server": "7", "docker": "27"})


def test_what_is_missing_follows_the_hardware_and_packages() -> None:
    hopper = Gpu(0, "H200", 139.8, "9.0", fp8_gemm=True)
    ampere = Gpu(0, "A100", 79.2, "8.0", fp8_gemm=False)

    assert missing_features(report_with([hopper])) == []
    [fp8] = missing_features(report_with([ampere]))
    assert "--quantization fp8" in fp8["affects"]
    no_flashinfer = missing_features(report_with([hopper], flashinfer=None))
    assert [item["missing"] for item in no_flashinfer] == ["flashinfer"]
    assert "--attention-backend flashinfer" in no_flashinfer[0]["affects"]
    no_redis = missing_features(report_with([hopper], redis=None))
    assert "Redis" in no_redis[0]["affects"]


def test_it_is_cheap_no_model_and_no_service_code(tmp_path: Path) -> None:
    probe = ("import sys; from radixmesh.cli import main; main(['check-env', '--json']); "
             "print(sorted(m for m in ('transformers', 'radixmesh.services.worker.loader', "
             "'radixmesh.engine') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=True)

    assert done.stdout.strip().splitlines()[-1] == "[]"
