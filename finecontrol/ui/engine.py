"""What the app needs from a model: generate with per-step callbacks, preview decoding, and a
plain description of the model, or the reason it could not load."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from finecontrol.pipeline import FineControlPipeline, Generation, StepCallback
from finecontrol.scene import Scene
from finecontrol.settings import Settings

RANDOM_WEIGHT_MODELS = {"tiny"}


@dataclass
class Engine:
    """A loaded model (or why it is missing) and how to run it."""

    name: str
    pipe: FineControlPipeline | None = None
    error: str | None = None
    run: Callable[[Scene, Settings, StepCallback | None], Generation] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if self.run is None and self.pipe is not None:
            self.run = lambda scene, settings, on_step: self.pipe(scene, settings, callback=on_step)

    @classmethod
    def load(cls, name: str, controlnet: str | None = None) -> Engine:
        """Load `name`; on failure keep the reason so the UI can show it instead of crashing."""
        from finecontrol.models import load_model

        try:
            return cls(name=name, pipe=load_model(name, controlnet=controlnet))
        except Exception as err:  # the app still starts and says why it cannot generate
            return cls(name=name, error=f"{type(err).__name__}: {err}")

    @property
    def random_weights(self) -> bool:
        return self.name in RANDOM_WEIGHT_MODELS

    @property
    def knows_words(self) -> bool:
        """True for a model that declares the only words it understands (the toy model)."""
        return bool(self.pipe and self.pipe.info.vocabulary)

    def describe(self) -> str:
        """One line of Markdown for the UI: which model is active and what to expect of it."""
        if self.error:
            return f"**Model `{self.name}` could not be loaded** - {self.error}"
        where = f"{self.pipe.device.type}, {str(self.pipe.dtype).replace('torch.', '')}"
        text = f"Model: **`{Path(self.name).name or self.name}`** ({where})"
        if self.random_weights:
            text += (
                " - random weights: images are noise, not pictures; they show the plumbing "
                "(masks, prompts, speed). Run with `--model sd15` for real images."
            )
        if self.knows_words:
            text += (
                " - a small model trained on a toy world of coloured stick figures; the words it "
                f"knows: {', '.join(self.pipe.info.vocabulary)}. Prompts like `a red person`, "
                "setting `on grass`, `in snow`, `on a beach` or `at night`."
            )
        return text

    def generate(self, scene: Scene, settings: Settings, on_step: StepCallback | None = None) -> Generation:
        if self.error or self.run is None:
            raise RuntimeError(f"model {self.name} is not available: {self.error}")
        with self._lock:  # one generation at a time on one model
            return self.run(scene, settings, on_step)

    def preview(self, x0) -> Image.Image:
        return self.pipe.decode(x0)
