"""python -m finecontrol.toyworld train --out DIR [--resume] | evaluate --out DIR [--model toy] [--scenes K]
[--people 2,3,4] [--seed S] [--methods M,...] [--spread F] | lora train --out DIR | lora evaluate --out DIR"""

import argparse
import time
from dataclasses import fields
from pathlib import Path

from finecontrol.toyworld.lora import add_commands as add_lora_commands
from finecontrol.toyworld.lora import run_command as run_lora_command
from finecontrol.toyworld.train import TrainConfig

parser = argparse.ArgumentParser(prog="python -m finecontrol.toyworld", description=__doc__)
commands = parser.add_subparsers(dest="command", required=True)
train = commands.add_parser("train", help="train the toy model from scratch (CPU)")
train.add_argument("--out", type=Path, required=True)
train.add_argument("--resume", action="store_true", help="continue the interrupted run saved in the checkpoint folder")
train.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: OUT/checkpoint)")
for setting in fields(TrainConfig):  # one flag per setting, only passed on when given
    train.add_argument(
        "--" + setting.name.replace("_", "-"),
        type=type(setting.default),
        default=argparse.SUPPRESS,
        help=f"{setting.metadata['help']} (default {setting.default})",
    )
evaluate = commands.add_parser("evaluate", help="identity, pose and setting scores of every method")
evaluate.add_argument("--out", type=Path, required=True)
evaluate.add_argument("--model", default="toy")
evaluate.add_argument("--scenes", type=int, default=64, help="held-out scenes per number of people")
evaluate.add_argument("--people", default="2,3,4")
evaluate.add_argument("--seed", type=int, default=1234)
evaluate.add_argument("--methods", default="finecontrol,controlnet,multicontrolnet", help="comma-separated")
evaluate.add_argument("--spread", type=float, default=1.0, help="distance between people, 0.5: crowded scenes")
add_lora_commands(commands)  # lora train --out DIR | lora evaluate --out DIR (finecontrol/toyworld/lora.py)
args = parser.parse_args()

if args.command == "lora":
    run_lora_command(args)
elif args.command == "train":
    from finecontrol.toyworld.train import train as run

    settings = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    run(args.out, resume=args.resume, checkpoint=args.checkpoint, **settings)
else:
    from tqdm import tqdm

    from finecontrol.models import load_model
    from finecontrol.settings import METHODS
    from finecontrol.toyworld.evaluate import evaluate as run
    from finecontrol.toyworld.evaluate import print_table, write_summary

    people = [int(n) for n in args.people.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods takes a comma-separated list of {', '.join(METHODS)}")
    bar = tqdm(total=len(people) * len(methods) * args.scenes, unit="image")
    start = time.time()
    results = run(
        load_model(args.model, device="cpu"),
        people,
        args.scenes,
        args.out,
        args.seed,
        methods=methods,
        progress=lambda: bar.update(1),
        spread=args.spread,
        model=args.model,
    )
    bar.close()
    write_summary(results, args.out)
    print_table(results)
    print(f"{time.time() - start:.0f} s; wrote {args.out / 'summary.json'}, summary.png and report.html")
