"""python -m finecontrol.toyworld train --out DIR | evaluate --out DIR [--model toy] [--scenes K] [--people 2,3,4] [--seed S] [--methods M,...] [--spread F]"""

import argparse
import time
from pathlib import Path

parser = argparse.ArgumentParser(prog="python -m finecontrol.toyworld", description=__doc__)
commands = parser.add_subparsers(dest="command", required=True)
train = commands.add_parser("train", help="train the toy model from scratch (CPU)")
train.add_argument("--out", type=Path, required=True)
train.add_argument("--vae-steps", type=int, default=300)
train.add_argument("--unet-steps", type=int, default=4500)
train.add_argument("--controlnet-steps", type=int, default=2000)
train.add_argument("--pool", type=int, default=32768, help="scenes rendered once and reused")
train.add_argument("--seed", type=int, default=0)
evaluate = commands.add_parser("evaluate", help="identity, pose and setting scores of every method")
evaluate.add_argument("--out", type=Path, required=True)
evaluate.add_argument("--model", default="toy")
evaluate.add_argument("--scenes", type=int, default=64, help="held-out scenes per number of people")
evaluate.add_argument("--people", default="2,3,4")
evaluate.add_argument("--seed", type=int, default=1234)
evaluate.add_argument("--methods", default="finecontrol,controlnet,multicontrolnet", help="comma-separated")
evaluate.add_argument("--spread", type=float, default=1.0, help="distance between people, 0.5: crowded scenes")
args = parser.parse_args()

if args.command == "train":
    from finecontrol.toyworld.train import train as run

    run(args.out, args.vae_steps, args.unet_steps, args.controlnet_steps, args.pool, args.seed)
else:
    from tqdm import tqdm

    from finecontrol.models import load_model
    from finecontrol.pipeline import METHODS
    from finecontrol.toyworld.evaluate import evaluate as run, print_table, write_report

    people = [int(n) for n in args.people.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods takes a comma-separated list of {', '.join(METHODS)}")
    bar = tqdm(total=len(people) * len(methods) * args.scenes, unit="image")
    start = time.time()
    results = run(load_model(args.model, device="cpu"), people, args.scenes, args.seed, methods=methods,
                  progress=lambda: bar.update(1), spread=args.spread)
    bar.close()
    write_report(results, args.out)
    print_table(results)
    print(f"{time.time() - start:.0f} s; wrote {args.out / 'results.json'} and {args.out / 'results.png'}")
