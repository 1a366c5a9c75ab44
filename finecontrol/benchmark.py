"""Timings.

`python -m finecontrol.benchmark --model sd15-random --size 512 --people 1,2,4 --flops --json OUT.json`:
what one denoising step costs for each method and number of people: FLOPs against the method's
floor (finecontrol: 2N x (UNet + ControlNet)), wall seconds (methods interleaved, median of
repeats) and peak memory (finecontrol/costs.py). `--gpu` runs the prepared GPU report instead
(finecontrol/gpu_report.py). `python -m finecontrol.benchmark --app`: the app's start-up time
(process start to the first page served) and, through its API, the masks-preview and generate
latencies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from finecontrol.costs import crowd  # noqa: F401  (the benchmarks' scenes)
from finecontrol.settings import COMPARED_METHODS, METHODS, Settings


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", help="tiny, sd15-random, toy, sd15, a hub id or a folder (default: tiny; --gpu: sd15-random)"
    )
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="(default: the model's; --gpu: fp16)")
    parser.add_argument("--size", help="square canvas sides in pixels, comma-separated (default: 512; --gpu: 512,768)")
    parser.add_argument("--people", help="numbers of people, comma-separated (default: 1,2,4; --gpu: 1,2,4,8)")
    parser.add_argument("--methods", default=",".join(COMPARED_METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--guidance", type=float, default=Settings().guidance_scale, help="1 runs one half")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per step too")
    parser.add_argument("--max-batch", type=int, help="most batch items per model call")
    parser.add_argument("--json", type=Path, help="write the figures here (and a .md table beside it)")
    parser.add_argument("--steps", type=int, default=20, help="--app and --gpu: denoising steps per image")
    parser.add_argument("--method", default="finecontrol", choices=METHODS, help="--app: the method timed")
    parser.add_argument("--app", action="store_true", help="time the app instead of the engine")
    parser.add_argument("--gpu", action="store_true", help="the prepared GPU report (finecontrol/gpu_report.py)")
    parser.add_argument("--variants", default="eager,channels_last,compile", help="--gpu: of those")
    parser.add_argument("--budget", type=float, default=420, help="--gpu: seconds, after which the rest is skipped")
    args = parser.parse_args(argv)
    if args.app:
        args.model, args.people = args.model or "tiny", args.people or "1,2,4"
        return benchmark_app(args)
    if args.gpu:
        from finecontrol.gpu_report import main as gpu_main

        args.model, args.size, args.people = (
            args.model or "sd15-random",
            args.size or "512,768",
            args.people or "1,2,4,8",
        )
        args.json = args.json or Path("gpu.json")
        return gpu_main(args)
    args.model, args.size, args.people = args.model or "tiny", args.size or "512", args.people or "1,2,4"
    cost(args)


def cost(args: argparse.Namespace) -> None:
    """Cost per denoising step of every method and number of people."""
    import torch

    from finecontrol import costs
    from finecontrol.models import load_model

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)
    pipe = load_model(args.model, device=args.device, dtype=dtype)
    pipe.max_batch = args.max_batch
    env = {**costs.environment(pipe), "model": args.model}
    print(f"model {args.model} on {env['device']} ({env['dtype']}, {env['threads']} threads)", flush=True)
    settings = Settings(guidance_scale=args.guidance)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    units, rows = [], []
    for size in _numbers(args.size):
        unit, size_rows = costs.measure(
            pipe,
            size,
            _numbers(args.people),
            methods,
            settings,
            repeats=args.repeats,
            count_flops=args.flops,
            log=lambda text: print(text, flush=True),
        )
        units.append(unit)
        rows += size_rows
    table = costs.markdown(units, rows, env)
    print(table)
    if args.json:
        costs.write(args.json, units, rows, env)
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")


def benchmark_app(args: argparse.Namespace, port: int = 7899) -> None:
    """Start `python app.py`, wait for its first page, then time its API."""
    from gradio_client import Client

    from finecontrol.ui.handlers import knob_values

    start = time.perf_counter()
    app = subprocess.Popen(
        [sys.executable, "app.py", "--model", args.model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                if app.poll() is not None:
                    raise SystemExit("the app exited before serving a page") from None
                time.sleep(0.1)
        print(f"app start-up (process start to first page): {time.perf_counter() - start:.1f} s")
        client = Client(url, verbose=False)
        for n in (int(v) for v in args.people.split(",")):
            scene = crowd(n).to_dict()
            knobs = knob_values(Settings(method=args.method, steps=args.steps))
            for name, api, extra in (("masks preview", "/masks", ()), ("generate", "/generate", ())):
                client.predict(scene, "in a park", "", *extra, *knobs, api_name=api)  # warm-up
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    client.predict(scene, "in a park", "", *extra, *knobs, api_name=api)
                    times.append(time.perf_counter() - t)
                print(f"N={n} {name}: {statistics.median(times):.2f} s median ({args.repeats} calls)")
    finally:
        app.terminate()
        app.wait()


if __name__ == "__main__":
    main()
