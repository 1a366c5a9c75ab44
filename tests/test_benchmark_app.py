"""`python -m finecontrol.benchmark --app`: the app's API timed against the same generation in-process."""

import argparse
import re

import pytest
from conftest import _free_port

from finecontrol.benchmark import benchmark_app


@pytest.mark.slow
def test_app_benchmark_times_the_api_against_the_same_generation_in_process(capsys):
    args = argparse.Namespace(model="toy", people="1", steps=2, repeats=1, method="finecontrol")
    benchmark_app(args, port=_free_port())
    out = capsys.readouterr().out
    assert re.search(r"app start-up \(process start to first page\): [\d.]+ s", out), out
    assert re.search(r"N=1 masks preview: [\d.]+ s median", out), out
    generate = re.search(
        r"N=1 generate: ([\d.]+) s median through the API, ([\d.]+) s in-process \(1 each, alternating\): "
        r"([\d.]+)x, ([+-][\d.]+) s; target 1\.1x \+ 0\.1 s = ([\d.]+) s, (met|missed); "
        r"with gradio_client's default TLS set-up: [\d.]+ s, [+-][\d.]+ s",
        out,
    )
    assert generate, out
    api, engine, ratio, _, target, verdict = generate.groups()
    assert float(engine) > 0 and float(ratio) == pytest.approx(float(api) / float(engine), rel=0.1)  # rounded
    assert float(target) == pytest.approx(1.1 * float(engine) + 0.1, abs=0.01)
    assert verdict == ("met" if float(api) <= float(target) else "missed")
