"""Timings.

`python -m finecontrol.benchmark --model sd15-random --size 512 --people 1,2,4 --flops --json OUT.json`:
what one denoising step costs for each method and number of people: FLOPs against the method's
floor (finecontrol: 2N x (UNet + ControlNet)), wall seconds (methods interleaved, median of
repeats) and peak memory (finecontrol/costs.py). `--gpu` runs the prepared GPU report instead
(finecontrol/gpu_report.py). `python -m finecontrol.benchmark --app`: the app's start-up time
(process start to the first page served) and, through its API, the masks-preview and generate
latencies. `python -m finecontrol.benchmark --load K --model toy`: the app started the same way,
then K gradio_client clients at once, each asking for one generation of a one-person scene: how
many completed, were rejected (queue full) or failed, latency percentiles, the app's resident
memory before and after, and the files left in its output folder and Gradio's cache.
`python -m finecontrol.benchmark --loras 8 --model tiny --size 128`: seconds per step of two
people without LoRAs, with one global LoRA, and with a different LoRA each (the mixed batch);
random rank-8 LoRAs on the UNet's attention and the text encoder.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from finecontrol.costs import crowd, proc_status
from finecontrol.scene import LoraRef
from finecontrol.settings import COMPARED_METHODS, METHODS, Settings


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        help="tiny, tiny-sdxl, sd15-random, sdxl-random, toy, sd15, sdxl, a hub id or a folder "
        "(default: tiny; --gpu: sd15-random)",
    )
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="(default: the model's; --gpu: fp16)")
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
    parser.add_argument("--load", type=int, metavar="K", help="K clients at once against the app")
    parser.add_argument("--gpu", action="store_true", help="the prepared GPU report (finecontrol/gpu_report.py)")
    parser.add_argument("--variants", default="eager,channels_last,compile", help="--gpu: of those")
    parser.add_argument("--budget", type=float, default=420, help="--gpu: seconds, after which the rest is skipped")
    parser.add_argument("--loras", type=int, metavar="RANK", help="time per-person LoRAs of this rank instead")
    args = parser.parse_args(argv)
    if args.loras:
        args.model, args.size = args.model or "tiny", args.size or "128"
        return benchmark_loras(args)
    if args.load:
        args.model = args.model or "toy"
        return benchmark_load(args)
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

    from finecontrol import costs
    from finecontrol.models import DTYPES, load_model

    dtype = DTYPES[args.dtype] if args.dtype else None
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
    """Start `python app.py`, wait for its first page, then time its API: the masks preview, and
    generation against the same scene and settings generated in this process (`pipe(scene,
    settings)` on the same model), calls alternating so both see the same machine load."""
    from gradio_client import Client

    from finecontrol.models import load_model
    from finecontrol.ui.handlers import knob_values, parse_scene

    start = time.perf_counter()
    app, url = _start_app(args.model, port)
    try:
        print(f"app start-up (process start to first page): {time.perf_counter() - start:.1f} s")
        # gradio_client builds a TLS context from the CA bundle for every file it downloads, even
        # over plain http (about 70 ms here per result PNG); a browser does not. The target is
        # judged on a client told not to (it changes nothing on an http URL); the default
        # client's time is printed beside it.
        client = Client(url, verbose=False, ssl_verify=False)
        default_client = Client(url, verbose=False)
        pipe = load_model(args.model)
        settings = Settings(method=args.method, steps=args.steps)
        knobs = knob_values(settings)
        for n in _numbers(args.people):
            inputs = ({**crowd(n).to_dict(), "setting": "in a park", "negative_prompt": ""},)
            client.predict(*inputs, *knobs, api_name="/masks")  # warm-up
            masks = _timed(args.repeats, client.predict, *inputs, *knobs, api_name="/masks")
            print(f"N={n} masks preview: {statistics.median(masks):.2f} s median ({args.repeats} calls)")
            scene = parse_scene(*inputs)  # exactly the scene the app generates
            api, default_api, engine = [], [], []
            for _ in range(args.repeats + 1):  # the first round warms all three up
                api += _timed(1, client.predict, *inputs, *knobs, api_name="/generate")
                default_api += _timed(1, default_client.predict, *inputs, *knobs, api_name="/generate")
                engine += _timed(1, pipe, scene, settings)
            api, default_api, engine = (statistics.median(t[1:]) for t in (api, default_api, engine))
            target = 1.1 * engine + 0.1
            print(
                f"N={n} generate: {api:.2f} s median through the API, {engine:.2f} s in-process "
                f"({args.repeats} each, alternating): {api / engine:.2f}x, {api - engine:+.2f} s; "
                f"target 1.1x + 0.1 s = {target:.2f} s, {'met' if api <= target else 'missed'}; "
                f"with gradio_client's default TLS set-up: {default_api:.2f} s, {default_api - engine:+.2f} s"
            )
    finally:
        app.terminate()
        app.wait()


def _start_app(model: str, port: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python app.py --model MODEL --port PORT` started and serving its first page: (process, URL)."""
    app = subprocess.Popen(
        [sys.executable, "app.py", "--model", model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return app, url
        except OSError:
            if app.poll() is not None:
                raise SystemExit("the app exited before serving a page") from None
            time.sleep(0.1)


def benchmark_load(args: argparse.Namespace) -> None:
    """Start the app (its temporary files in a fresh folder), warm it up with one generation, then
    send `args.load` generations of a one-person scene from as many clients at once."""
    from gradio_client import Client
    from gradio_client.utils import QueueError

    from finecontrol.ui.handlers import knob_values

    k = args.load
    folder = Path(tempfile.mkdtemp(prefix="finecontrol-load-"))  # the app's outputs and Gradio's cache
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = _start_app(args.model, port, {"TMPDIR": str(folder), "GRADIO_TEMP_DIR": str(folder / "gradio")})
    inputs = ({**crowd(1).to_dict(), "setting": "in a park", "negative_prompt": ""},)
    try:
        Client(url, verbose=False, ssl_verify=False).predict(*inputs, *knob_values(Settings()), api_name="/generate")
        rss_before = proc_status("VmRSS", app.pid)
        clients = [Client(url, verbose=False, ssl_verify=False) for _ in range(k)]
        outcomes: list[tuple[str, float]] = []
        start = threading.Barrier(k)

        def one(index: int) -> None:
            start.wait()
            began = time.perf_counter()
            try:
                clients[index].predict(*inputs, *knob_values(Settings(seed=index)), api_name="/generate")
                outcomes.append(("completed", time.perf_counter() - began))
            except QueueError:
                outcomes.append(("rejected", 0.0))
            except Exception as err:
                outcomes.append((f"failed: {type(err).__name__}: {err}", 0.0))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_after = proc_status("VmRSS", app.pid)
    finally:
        app.terminate()
        app.wait()
    done = sorted(seconds for kind, seconds in outcomes if kind == "completed")
    rejected = sum(kind == "rejected" for kind, _ in outcomes)
    failures = [kind for kind, _ in outcomes if kind.startswith("failed")]
    print(f"{k} clients: {len(done)} completed, {rejected} rejected (queue full), {len(failures)} failed")
    for failure in sorted(set(failures)):
        print(f"  {failure}")
    if done:
        p95 = done[min(len(done) - 1, round(0.95 * (len(done) - 1)))]
        print(f"latency of the completed: p50 {statistics.median(done):.2f} s, p95 {p95:.2f} s, max {done[-1]:.2f} s")
    print(
        f"RSS of the app: {rss_before / 2**20:.0f} MiB after one warm-up generation, "
        f"{rss_after / 2**20:.0f} MiB after the load ({(rss_after - rss_before) / 2**20:+.0f} MiB)"
    )
    outputs = sum(1 for p in folder.glob("finecontrol-*/*") if p.is_file())
    cached = sum(1 for p in (folder / "gradio").rglob("*") if p.is_file())
    print(f"files in the output folder and Gradio's cache: {outputs} and {cached} ({len(done) + 1} generations made)")


def benchmark_loras(args: argparse.Namespace) -> None:
    """Seconds per step, two people: no LoRA, one global LoRA, a different LoRA per person."""
    from dataclasses import replace

    from finecontrol import costs
    from finecontrol.models import DTYPES, load_model

    pipe = load_model(args.model, device=args.device, dtype=DTYPES[args.dtype] if args.dtype else None)
    size = _numbers(args.size)[0]
    scene, folder = crowd(2, size, size), Path(tempfile.mkdtemp())
    paths = [save_random_lora(pipe, folder / f"{name}.safetensors", args.loras, seed) for seed, name in enumerate("ab")]
    mixed = replace(scene, people=[replace(p, loras=[]) for p in scene.people])
    for person, path in zip(mixed.people, paths):
        person.loras = [LoraRef(str(path), 1.0)]
    settings = Settings(steps=args.steps, guidance_scale=args.guidance, width=size, height=size)
    runs = {
        "no LoRA": (scene, settings),
        "one global LoRA": (scene, replace(settings, loras=str(paths[0]))),
        "mixed: a LoRA per person": (mixed, settings),
    }
    env = costs.environment(pipe)
    print(f"{args.model} {size} px, 2 people, rank {args.loras}, {args.steps} steps, {env['device']} {env['dtype']}")
    for scene_, settings_ in runs.values():  # warm: LoRAs loaded, prompts cached
        pipe(scene_, replace(settings_, steps=1), decode=False)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits every run alike
        for name, (scene_, settings_) in runs.items():
            times[name] += _timed(1, pipe, scene_, settings_, decode=False)
    base = statistics.median(times["no LoRA"]) / args.steps
    for name, values in times.items():
        per_step = statistics.median(values) / args.steps
        print(f"{name:26s} {per_step:.4f} s/step  x{per_step / base:.3f}")


def save_random_lora(pipe, path: Path, rank: int, seed: int) -> Path:
    """A random LoRA (non-zero B) on the UNet's attention and the text encoder, saved in diffusers' format."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    layers = {}
    targets = {"unet": ["to_q", "to_k", "to_v", "to_out.0"], "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part, modules in targets.items():
            model = inject_adapter_in_model(
                LoraConfig(r=rank, lora_alpha=rank, target_modules=modules), copy.deepcopy(getattr(pipe, part)).cpu()
            )
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(weight, std=0.01)
            layers[part] = get_peft_model_state_dict(model)
    StableDiffusionPipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"],
        weight_name=path.name,
    )
    return path


def _timed(repeats: int, fn, *args, **kwargs) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn(*args, **kwargs)`."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    main()
