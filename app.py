"""FineControl Studio: `python app.py [--model toy|tiny|tiny-sdxl|sd15|sdxl|HUB_ID|FOLDER|FILE.safetensors]
[--host 127.0.0.1] [--port 7860]`.

Parses flags, loads the model once, builds the UI and launches it with a queue. The model
defaults to $FINECONTROL_MODEL, else the real SD1.5 + OpenPose ControlNet pair when CUDA is
present, else the shipped `toy` model (the random `tiny` one if the toy weights are absent).
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from finecontrol.models import DEFAULT_ANNOTATORS, offline_default
from finecontrol.pipeline import Generation, StepCallback
from finecontrol.scene import Scene
from finecontrol.settings import Settings
from finecontrol.ui.demo import CSS, MAX_UPLOAD_BYTES, build_demo, queue
from finecontrol.ui.engine import Engine

log = logging.getLogger("finecontrol.app")

try:  # Hugging Face Spaces: ZeroGPU lends a GPU for the decorated call only; elsewhere a no-op
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn):
        return fn


def default_model() -> str:
    return os.environ.get("FINECONTROL_MODEL") or ("sd15" if torch.cuda.is_available() else offline_default())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FineControl Studio")
    parser.add_argument(
        "--model",
        default=default_model(),
        help="toy, tiny, tiny-sdxl, sd15, sdxl, a hub id, a local folder or a single-file checkpoint "
        "(default: $FINECONTROL_MODEL, else sd15 with CUDA, else toy)",
    )
    parser.add_argument(
        "--controlnet", default=os.environ.get("FINECONTROL_CONTROLNET"), help="OpenPose ControlNet hub id or folder"
    )
    parser.add_argument(
        "--annotators",
        default=os.environ.get("FINECONTROL_ANNOTATORS", DEFAULT_ANNOTATORS),
        help="OpenPose detector weights for pose-from-photo (hub id or folder)",
    )
    parser.add_argument(
        "--clip",
        default=os.environ.get("FINECONTROL_CLIP"),
        help="CLIP folder or hub id whose identity scores are shown under each result, when it is here "
        "(default: openai/clip-vit-base-patch32 if in the hub cache; the toy model shows its colour check)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("finecontrol").setLevel(logging.INFO)  # ours at INFO; libraries' (httpx...) at WARNING
    args = parse_args()
    engine = Engine.load(args.model, args.controlnet, clip=args.clip)
    if engine.error:
        log.warning("model %s could not be loaded; the app starts and says why: %s", args.model, engine.error)
    else:
        log.info("model %s loaded on %s (%s)", args.model, engine.pipe.device, engine.pipe.dtype)

    @gpu
    def run(scene: Scene, settings: Settings, on_step: StepCallback | None) -> Generation:
        return engine.pipe(scene, settings, callback=on_step)

    engine.run = run
    demo = queue(build_demo(engine, annotators=args.annotators), max_size=20)
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, max_file_size=MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
