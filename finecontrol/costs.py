"""What a denoising step costs, per method and number of people: FLOPs against the method's
floor, wall seconds and peak memory (`python -m finecontrol.benchmark --cost`).

The floor is what the method must compute per step, in units of one UNet forward (U) and one
ControlNet forward (C) at batch 1 on the same latent, G being the guidance halves run (2, or 1
when guidance_scale is 1):
- finecontrol, finecontrol-all: G * N * (U + C), one branch per person and half;
- multicontrolnet: G * N * C + G * U;
- controlnet: G * (U + C).
FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
attention; element-wise work is not counted) between two step callbacks, so prompt encoding and
VAE decoding are left out. Wall seconds are the time between step callbacks, with methods
interleaved in each repeat so their ratios hold on a busy machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from finecontrol.pipeline import FineControlPipeline, guidance_halves
from finecontrol.scene import Person, Scene
from finecontrol.settings import Settings

TIMED_STEPS = 3  # per timed run: the 2 intervals between its 3 step callbacks are timed


def crowd(n: int, width: int = 768, height: int = 512) -> Scene:
    """N template people spread evenly across the canvas."""
    from finecontrol.pose import TEMPLATE_NAMES, template_pose

    step = width / (n + 1)
    people = [
        Person(
            template_pose(TEMPLATE_NAMES[i % len(TEMPLATE_NAMES)], step * (i + 1), height - 16, height * 0.8),
            prompt=f"person {i + 1}",
        )
        for i in range(n)
    ]
    return Scene(width=width, height=height, people=people, setting="in a park")


@dataclass
class UnitCost:
    """One UNet (U) and one ControlNet (C) forward at batch 1 on one latent size."""

    size: int
    unet_flops: int
    controlnet_flops: int
    unet_seconds: float
    controlnet_seconds: float


@dataclass
class StepCost:
    """One configuration's cost per denoising step."""

    method: str
    people: int
    size: int
    halves: int
    flops: int | None
    floor_flops: int
    seconds: float
    peak_bytes: int
    runs: int

    @property
    def flops_ratio(self) -> float | None:
        return None if self.flops is None else self.flops / self.floor_flops


def floor_flops(method: str, people: int, halves: int, unit: UnitCost) -> int:
    """The FLOPs a step of `method` cannot do without (see the module docstring)."""
    u, c = unit.unet_flops, unit.controlnet_flops
    if method == "controlnet":
        return halves * (u + c)
    if method == "multicontrolnet":
        return halves * people * c + halves * u
    return halves * people * (u + c)


def unit_cost(pipe: FineControlPipeline, size: int, repeats: int = 3) -> UnitCost:
    """FLOPs and median wall seconds of one UNet and one ControlNet forward at batch 1."""
    side = size // pipe.vae_scale
    latents = torch.randn(1, pipe.unet.config.in_channels, side, side, device=pipe.device, dtype=pipe.dtype)
    context = pipe.encode_prompts([""]).with_size(size, size).kwargs()
    control = torch.zeros(1, 3, size, size, device=pipe.device, dtype=pipe.dtype)
    t = torch.tensor(500, device=pipe.device)

    def unet():
        return pipe.unet(latents, t, **context, return_dict=False)

    def controlnet():
        return pipe.controlnet(latents, t, **context, controlnet_cond=control, return_dict=False)

    flops, seconds = {}, {}
    with torch.no_grad():
        for name, call in (("unet", unet), ("controlnet", controlnet)):
            with FlopCounterMode(display=False) as counter:
                call()  # also the warm-up
            flops[name] = counter.get_total_flops()
            times = []
            for _ in range(repeats):
                synchronize(pipe.device)
                start = time.perf_counter()
                call()
                synchronize(pipe.device)
                times.append(time.perf_counter() - start)
            seconds[name] = statistics.median(times)
    return UnitCost(size, flops["unet"], flops["controlnet"], seconds["unet"], seconds["controlnet"])


def step_flops(pipe: FineControlPipeline, scene: Scene, settings: Settings) -> int:
    """FLOPs of one denoising step: counted between the first and second step callbacks of a
    two-step run (no prompt encoding, no decoding in between)."""
    totals = []

    def count(*_) -> None:
        totals.append(counter.get_total_flops())

    with FlopCounterMode(display=False) as counter:
        pipe(scene, replace(settings, steps=2), callback=count, decode=False)
    return totals[1] - totals[0]


def timed_run(pipe: FineControlPipeline, scene: Scene, settings: Settings) -> tuple[list[float], int]:
    """Seconds between consecutive step callbacks of a TIMED_STEPS run, and the peak memory above
    what was in use before it (CUDA: allocated bytes; CPU: resident set size)."""
    stamps = []

    def stamp(*_):
        synchronize(pipe.device)
        stamps.append(time.perf_counter())

    before = memory_reset(pipe.device)
    pipe(scene, replace(settings, steps=TIMED_STEPS), callback=stamp, decode=False)
    peak = memory_peak(pipe.device) - before
    return [b - a for a, b in zip(stamps, stamps[1:])], peak


def measure(
    pipe: FineControlPipeline,
    size: int,
    people: list[int],
    methods: list[str],
    settings: Settings,
    repeats: int = 3,
    count_flops: bool = True,
    log=print,
) -> tuple[UnitCost, list[StepCost]]:
    """Every (method, N) configuration's cost per step on `size` x `size` pixels."""
    unit = unit_cost(pipe, size)
    log(
        f"{size} px: U {unit.unet_flops / 1e9:.1f} GFLOP {unit.unet_seconds:.3f} s, "
        f"C {unit.controlnet_flops / 1e9:.1f} GFLOP {unit.controlnet_seconds:.3f} s"
    )
    configs = [(method, n) for n in people for method in methods]
    scenes = {n: crowd(n, size, size) for n in people}
    base = replace(settings, width=size, height=size)
    flops = {}
    for method, n in configs:  # also the warm-up of each configuration
        run_settings = replace(base, method=method)
        if count_flops:
            flops[method, n] = step_flops(pipe, scenes[n], run_settings)
        else:
            pipe(scenes[n], replace(run_settings, steps=1), decode=False)
    seconds = {config: [] for config in configs}
    peaks = {config: 0 for config in configs}
    for repeat in range(repeats):
        for method, n in configs:  # interleaved: every method sees the same machine load
            intervals, peak = timed_run(pipe, scenes[n], replace(base, method=method, seed=repeat))
            seconds[method, n] += intervals
            peaks[method, n] = max(peaks[method, n], peak)
        log(f"{size} px: repeat {repeat + 1}/{repeats} done")
    halves = guidance_halves(settings)
    return unit, [
        StepCost(
            method=method,
            people=n,
            size=size,
            halves=halves,
            flops=flops.get((method, n)),
            floor_flops=floor_flops(method, n, halves, unit),
            seconds=statistics.median(seconds[method, n]),
            peak_bytes=peaks[method, n],
            runs=len(seconds[method, n]),
        )
        for method, n in configs
    ]


def per_person_bytes(rows: list[StepCost], method: str = "finecontrol") -> dict[int, float]:
    """Peak memory added by each extra person, by size: the slope of peak memory over N."""
    slopes = {}
    for size in sorted({r.size for r in rows}):
        points = sorted((r.people, r.peak_bytes) for r in rows if r.size == size and r.method == method)
        if len(points) >= 2:
            (n0, m0), (n1, m1) = points[0], points[-1]
            slopes[size] = (m1 - m0) / (n1 - n0)
    return slopes


def markdown(units: list[UnitCost], rows: list[StepCost], environment: dict) -> str:
    """The cost tables as Markdown."""
    lines = [
        f"{environment['device']} ({environment['dtype']}, {environment['threads']} threads), "
        f"guidance halves G = {rows[0].halves}; per denoising step.",
        "",
        "| size | U GFLOP | C GFLOP | U s | C s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {u.size} | {u.unet_flops / 1e9:.1f} | {u.controlnet_flops / 1e9:.1f} | "
        f"{u.unet_seconds:.3f} | {u.controlnet_seconds:.3f} |"
        for u in units
    ]
    lines += [
        "",
        "| size | N | method | GFLOP/step | floor | FLOPs / floor | s/step | vs controlnet | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reference = {(r.size, r.people): r.seconds for r in rows if r.method == "controlnet"}
    for r in rows:
        flops = "-" if r.flops is None else f"{r.flops / 1e9:.0f}"
        ratio = "-" if r.flops_ratio is None else f"{r.flops_ratio:.3f}"
        versus = f"{r.seconds / reference[r.size, r.people]:.2f}x" if (r.size, r.people) in reference else "-"
        lines.append(
            f"| {r.size} | {r.people} | {r.method} | {flops} | {r.floor_flops / 1e9:.0f} | {ratio} | "
            f"{r.seconds:.2f} | {versus} | {r.peak_bytes / 2**20:.0f} MiB |"
        )
    ratios = wall_ratios(rows)
    if ratios:
        lines += ["", "| size | N | finecontrol / multicontrolnet, s | same, FLOPs | finecontrol / controlnet, s |"]
        lines.append("|---|---|---|---|---|")
        lines += [
            f"| {size} | {n} | {r['wall']:.2f} | {_shown(r['flops'])} | {_shown(r['vs_controlnet'])} |"
            for (size, n), r in ratios.items()
        ]
    slopes = per_person_bytes(rows)
    if slopes:
        lines += [
            "",
            "Peak memory per extra person (finecontrol): "
            + ", ".join(f"{size} px {slope / 2**20:.0f} MiB" for size, slope in slopes.items()),
        ]
    return "\n".join(lines) + "\n"


def _shown(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def wall_ratios(rows: list[StepCost]) -> dict[tuple[int, int], dict]:
    """finecontrol against multicontrolnet (wall and FLOPs) and controlnet (wall), by (size, N)."""
    by = {(r.size, r.people, r.method): r for r in rows}
    ratios = {}
    for (size, n, method), row in by.items():
        multi, single = by.get((size, n, "multicontrolnet")), by.get((size, n, "controlnet"))
        if method != "finecontrol" or multi is None:
            continue
        ratios[size, n] = {
            "wall": row.seconds / multi.seconds,
            "flops": row.flops / multi.flops if row.flops and multi.flops else None,
            "vs_controlnet": row.seconds / single.seconds if single else None,
        }
    return ratios


def environment(pipe: FineControlPipeline) -> dict:
    """Where the figures were measured."""
    device = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": device,
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write(path: Path, units: list[UnitCost], rows: list[StepCost], env: dict, extra: dict | None = None) -> None:
    """JSON with every figure (and a Markdown table next to it, same name, .md)."""
    doc = {
        "environment": env,
        "units": [asdict(u) for u in units],
        "steps": [{**asdict(r), "flops_ratio": r.flops_ratio} for r in rows],
        "per_person_bytes": per_person_bytes(rows),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(units, rows, env))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_reset(device: torch.device) -> int:
    """Reset the peak-memory counter; return the memory in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _release_free_heap()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current VmRSS
    return proc_status("VmRSS")


def _release_free_heap() -> None:
    """Hand memory that was freed but kept by glibc's allocator back to the system, so the
    resident set before a run is what is in use."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return proc_status("VmHWM")


def proc_status(field: str, pid: int | str = "self") -> int:
    """A memory field of `/proc/PID/status` (VmRSS, VmHWM...) in bytes (Linux)."""
    path = Path(f"/proc/{pid}/status")
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{path} has no {field}")
