"""Timings. `python -m finecontrol.benchmark [--model tiny] [--people 1,2,4]`: seconds per image
by number of people (N template people side by side; median and best of `--repeats` after one
warm-up). `python -m finecontrol.benchmark --app`: the app's start-up time (process start to the
first page served) and, through its API, the masks-preview and generate latencies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

from finecontrol.models import load_model
from finecontrol.pose import TEMPLATE_NAMES, template_pose
from finecontrol.scene import Person, Scene
from finecontrol.settings import METHODS, Settings


def crowd(n: int, width: int = 768, height: int = 512) -> Scene:
    """N people spread evenly across the canvas."""
    step = width / (n + 1)
    people = [
        Person(
            template_pose(TEMPLATE_NAMES[i % len(TEMPLATE_NAMES)], step * (i + 1), height - 16, height * 0.8),
            prompt=f"person {i + 1}",
        )
        for i in range(n)
    ]
    return Scene(width=width, height=height, people=people, setting="in a park")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device")
    parser.add_argument("--people", default="1,2,4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="finecontrol", choices=METHODS)
    parser.add_argument("--app", action="store_true", help="time the app instead of the engine")
    args = parser.parse_args()
    if args.app:
        return benchmark_app(args)

    pipe = load_model(args.model, device=args.device)
    print(f"model {args.model} on {pipe.device} ({pipe.dtype}), {args.steps} steps, method {args.method}")
    for n in (int(v) for v in args.people.split(",")):
        scene = crowd(n)
        settings = Settings(method=args.method, steps=args.steps)
        pipe(scene, replace(settings, steps=2))  # warm-up
        times = []
        for seed in range(args.repeats):
            start = time.perf_counter()
            pipe(scene, replace(settings, seed=seed))
            times.append(time.perf_counter() - start)
        width, height = pipe.generation_size(scene, settings)
        print(
            f"N={n}: {statistics.median(times):.2f} s/image median, {min(times):.2f} best "
            f"({width}x{height}, {args.repeats} runs)"
        )


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
