"""The prepared GPU report's code path, run on CPU at a small size (no GPU here)."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import assert_close

from finecontrol.benchmark import main
from finecontrol.gpu_report import apply_variant
from finecontrol.models import tiny_pipeline
from finecontrol.settings import Settings


def test_gpu_report_times_every_configuration_and_compares_precisions(tmp_path):
    out = tmp_path / "gpu.json"
    main(
        [
            "--gpu",
            "--device",
            "cpu",
            "--model",
            "tiny",
            "--dtype",
            "bf16",
            "--size",
            "64",
            "--people",
            "1,2",
            "--methods",
            "finecontrol,controlnet",
            "--steps",
            "3",
            "--variants",
            "eager,channels_last",
            "--json",
            str(out),
        ]
    )
    doc = json.loads(out.read_text())
    runs = {(r["variant"], r["people"], r["method"]) for r in doc["runs"]}
    assert runs == {
        (v, n, m) for v in ("eager", "channels_last") for n in (1, 2) for m in ("finecontrol", "controlnet")
    }
    assert all(r["finite"] and r["s_per_image"] > r["s_per_step"] > 0 for r in doc["runs"])
    precision = doc["precision"]
    assert precision["dtype"] == "bfloat16" and 0 < precision["relative"] < 0.1
    assert doc["environment"]["attention"] == "AttnProcessor2_0" and not doc["skipped"]
    table = out.with_suffix(".md").read_text()
    assert "| channels_last | 64 | 2 | finecontrol |" in table and "bfloat16 against fp32" in table


def test_a_short_budget_skips_the_rest_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    main(
        ["--gpu", "--device", "cpu", "--model", "tiny", "--size", "64", "--people", "1", "--steps", "2"]
        + ["--variants", "eager", "--budget", "0", "--json", str(out)]
    )
    doc = json.loads(out.read_text())
    assert not doc["runs"] and len(doc["skipped"]) == 3
    assert "Skipped for the time budget: eager 64 px N=1 finecontrol" in out.with_suffix(".md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["channels_last", "compile"])
def test_the_faster_variants_give_the_same_image(two_people, variant):
    """channels_last and torch.compile of the repeated blocks change speed, not the latents."""
    eager, fast = tiny_pipeline(), tiny_pipeline()
    apply_variant(fast, variant)
    if variant == "compile":
        compiled = [m for m in fast.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None]
        assert len(compiled) > 10
    settings = Settings(steps=2, seed=3, width=64, height=64)
    for method in ("finecontrol", "multicontrolnet"):
        expected = eager(two_people, replace(settings, method=method)).latents
        got = fast(two_people, replace(settings, method=method)).latents
        assert_close(got, expected, atol=1e-4 * expected.abs().max().item())
    assert torch.isfinite(got).all()


def test_gpu_report_runs_an_sdxl_model(tmp_path):
    """`--gpu --model sdxl-random --size 1024` on a GPU; here its code path on tiny-sdxl."""
    out = tmp_path / "gpu_sdxl.json"
    main(
        ["--gpu", "--device", "cpu", "--model", "tiny-sdxl", "--dtype", "bf16", "--size", "64", "--people", "1,2"]
        + ["--methods", "finecontrol", "--steps", "2", "--variants", "eager", "--json", str(out)]
    )
    doc = json.loads(out.read_text())
    assert [(r["people"], r["method"]) for r in doc["runs"]] == [(1, "finecontrol"), (2, "finecontrol")]
    assert all(r["finite"] for r in doc["runs"]) and 0 < doc["precision"]["relative"] < 0.1
