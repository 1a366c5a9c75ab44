"""What the app needs from a model: generate with per-step callbacks, cheap live previews, and a
plain description of the model, or the reason it could not load.

Every torch computation of the app (loading, generating, previews, masks, pose detection) runs on
one thread, `TORCH_THREAD` (`on_torch_thread`). torch's CPU workers (OpenMP) are a team per thread
that calls torch, and once libgomp's threads outnumber the cores it hardly spin-waits between
operations any more, so each of a step's many small operations pays a wake-up. Measured on 2
cores, toy model, 2 people, 20 steps: 0.79 s per image on the thread that loaded the model,
2.04 s on another one, and 2.11 s on it too once a masks preview had run on a third (2.06 s in one
thread with OMP_WAIT_POLICY=passive, against 0.74 s). Gradio runs handlers on a pool of threads.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from finecontrol.models import RANDOM_WEIGHT_MODELS
from finecontrol.pipeline import FineControlPipeline, Generation, StepCallback
from finecontrol.previews import previewer_for
from finecontrol.scene import Scene
from finecontrol.settings import Settings

_TORCH_THREAD_NAME = "finecontrol-torch"
TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_TORCH_THREAD_NAME)
_BETWEEN_STEPS: queue.SimpleQueue = queue.SimpleQueue()  # (call, future) for run_between_steps
T = TypeVar("T")
log = logging.getLogger(__name__)


def on_torch_thread(fn: Callable[..., T], *args: Any, between_steps: bool = False, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run on the app's torch thread (directly when already on it), after
    the work queued before it; with `between_steps`, also between the steps of a running
    generation (`run_between_steps`), for short work (masks, pose detection) that should not
    wait for a whole generation. Never a generation itself between steps."""
    if threading.current_thread().name.startswith(_TORCH_THREAD_NAME):
        return fn(*args, **kwargs)
    if not between_steps:
        return TORCH_THREAD.submit(fn, *args, **kwargs).result()
    future: Future = Future()
    _BETWEEN_STEPS.put((partial(fn, *args, **kwargs), future))
    TORCH_THREAD.submit(run_between_steps)  # when no generation is running
    return future.result()


def run_between_steps() -> None:
    """Run the `between_steps` calls waiting for the torch thread (called from it)."""
    while True:
        try:
            call, future = _BETWEEN_STEPS.get_nowait()
        except queue.Empty:
            return
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as err:  # raised in the caller's thread
                future.set_exception(err)


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
        """Load `name` (on the torch thread) and fit its live previews; on failure keep the
        reason so the UI can show it instead of crashing."""
        from finecontrol.models import load_model

        try:
            engine = cls(name=name, pipe=on_torch_thread(load_model, name, controlnet=controlnet))
        except Exception as err:  # the app still starts and says why it cannot generate
            return cls(name=name, error=f"{type(err).__name__}: {err}")
        engine.fit_previews()
        return engine

    def fit_previews(self) -> None:
        """Fit the previews' latent -> RGB map now, not in the first generation. Where the model
        cannot run outside a generation (ZeroGPU lends the GPU per call) it is fitted there."""
        try:
            on_torch_thread(previewer_for, self.pipe)
        except Exception as err:  # fitted again at the first preview, where a failure shows
            log.warning("live previews not fitted at load (%s: %s); fitting at the first one", type(err).__name__, err)

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
                " - random weights (untrained): its images are noise, not pictures; they show the "
                "plumbing (masks, prompts, speed). Run with `--model sd15` for real images."
            )
        if self.knows_words:
            text += (
                " - a small model trained on a toy world of coloured stick figures; the words it "
                f"knows: {', '.join(self.pipe.info.vocabulary)}. Prompts like `a red person`, "
                "setting `on grass`, `in snow`, `on a beach` or `at night`."
            )
        return text

    def generate(self, scene: Scene, settings: Settings, on_step: StepCallback | None = None) -> Generation:
        """One generation, run on the torch thread; `on_step` is called there after each step."""
        if self.error or self.run is None:
            raise RuntimeError(f"model {self.name} is not available: {self.error}")
        with self._lock:  # one generation at a time on one model
            return on_torch_thread(self.run, scene, settings, on_step)

    def preview(self, x0) -> Image.Image:
        """A live preview of the denoising estimate `x0`: one pixel per latent cell, from the
        model's fitted latent -> RGB map (no VAE decode)."""
        return previewer_for(self.pipe)(x0)
