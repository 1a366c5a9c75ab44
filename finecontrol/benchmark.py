"""Seconds per image by number of people: `python -m finecontrol.benchmark [--model tiny] [--people 1,2,4]`.

Each scene has N template people side by side; each figure is the median (and best) of
`--repeats` generations after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from finecontrol.models import load_model
from finecontrol.pipeline import METHODS, Settings
from finecontrol.pose import TEMPLATE_NAMES, template_pose
from finecontrol.scene import Person, Scene


def crowd(n: int, width: int = 768, height: int = 512) -> Scene:
    """N people spread evenly across the canvas."""
    step = width / (n + 1)
    people = [
        Person(template_pose(TEMPLATE_NAMES[i % len(TEMPLATE_NAMES)], step * (i + 1), height - 16, height * 0.8),
               prompt=f"person {i + 1}")
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
    args = parser.parse_args()

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
        print(f"N={n}: {statistics.median(times):.2f} s/image median, {min(times):.2f} best "
              f"({width}x{height}, {args.repeats} runs)")


if __name__ == "__main__":
    main()
