"""What the app needs from a model: generate with per-step callbacks, cheap live previews, and a
plain description of the model, or the reason it could not load.

Every torch computation of the app (loading, generating, previews, masks, pose detection) runs on
one thread, `TORCH_THREAD` (`on_torch_thread`). torch's CPU workers (OpenMP) are a team per thread
that calls torch, and once libgomp's threads outnumber the cores it hardly spin-waits between
operations any more, so each of a step's many small operations pays a wake-up. Measured on 2
cores, toy model, 2 people, 20 steps: 0.79 s per image on the thread that loaded the model,
2.04 s on another one, and 2.11 s on it too once a masks preview had run on a third (2.06 s in one
thread with OMP_WAIT_POLICY=passive, against 0.74 s). Gradio runs handlers on a pool of threads.

Cancelling: Gradio cancels an event by cancelling its asyncio task. A plain (sync) handler runs on a
worker thread that nobody stops, and a sync generator is closed only once its current item is
done, so a cancelled Compare ran to its end and held the torch thread. The app's long handlers
therefore run through `iterate_cancellable`, which sets a `cancel` event the
moment the task is cancelled; the step callback checks it and raises `GenerationCancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from finecontrol.experiments import Scorer
from finecontrol.loras import available_loras
from finecontrol.model_info import unknown_words
from finecontrol.models import RANDOM_WEIGHT_MODELS
from finecontrol.pipeline import FineControlPipeline, Generation, StepCallback
from finecontrol.previews import previewer_for
from finecontrol.scene import Scene
from finecontrol.settings import Settings
from finecontrol.toyworld.evaluate import ToyScores, is_toy_scene
from finecontrol.ui.editor import DEFAULT_EXAMPLES
from finecontrol.ui.text import code_span, without_server_paths

_TORCH_THREAD_NAME = "finecontrol-torch"
TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_TORCH_THREAD_NAME)
_BETWEEN_STEPS: queue.SimpleQueue = queue.SimpleQueue()  # (call, future) for run_between_steps
T = TypeVar("T")
# Placeholders for a model that knows only a few words (the toy model's): a prompt and a setting.
TOY_EXAMPLES = ("a red person", "on grass")
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


class GenerationCancelled(Exception):
    """Raised by a generation's step callback once its job was cancelled: the denoising loop stops
    after the step that was running, and the torch thread is free for the next job."""


_FINISHED = object()


async def iterate_cancellable(make: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """The items of the sync generator `make(cancel)`, each computed on a worker thread (in the
    caller's context variables, where Gradio's progress finds its event). Cancelling the task that
    iterates (Gradio's cancel) or closing this generator sets `cancel` at once, even while an item
    is being computed; the worker thread is left to stop by itself (within a step)."""
    cancel = threading.Event()
    iterator = make(cancel)
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _FINISHED)
            if item is _FINISHED:
                return
            yield item
    finally:
        cancel.set()  # a no-op once the generator is exhausted


@dataclass
class Engine:
    """A loaded model (or why it is missing) and how to run it."""

    name: str
    pipe: FineControlPipeline | None = None
    error: str | None = None
    run: Callable[[Scene, Settings, StepCallback | None], Generation] | None = None
    scorer: Scorer | None = None  # scores each person of a result; None: no scores

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if self.run is None and self.pipe is not None:
            self.run = lambda scene, settings, on_step: self.pipe(scene, settings, callback=on_step)

    @classmethod
    def load(cls, name: str, controlnet: str | None = None, clip: str | None = None) -> Engine:
        """Load `name` (on the torch thread), fit its live previews and find its scorer; on failure
        keep the reason so the UI can show it instead of crashing."""
        from finecontrol.models import load_model

        try:
            engine = cls(name=name, pipe=on_torch_thread(load_model, name, controlnet=controlnet))
        except Exception as err:  # the app still starts and says why it cannot generate
            return cls(name=name, error=f"{type(err).__name__}: {err}")
        engine.fit_previews()
        engine.scorer = on_torch_thread(result_scorer, engine.pipe, clip)
        return engine

    def score(self, image: Image.Image, scene: Scene) -> list[dict] | None:
        """Each person's scores for a result, or None: no scorer, or a scene it cannot score (the
        toy's scores need every prompt in toy words)."""
        if self.scorer is None or self.why_not_scored(scene):
            return None
        return self.scorer.score(image, scene)

    def why_not_scored(self, scene: Scene) -> str:
        """Why a result of `scene` has no scores although this model has a scorer; "" otherwise."""
        if isinstance(self.scorer, ToyScores) and not is_toy_scene(scene):
            return "Colour check skipped: it reads prompts of the form `a red person` only."
        return ""

    def fit_previews(self) -> None:
        """Fit the previews' latent -> RGB map now, not in the first generation. Where the model
        cannot run outside a generation (ZeroGPU lends the GPU per call) it is fitted there."""
        try:
            on_torch_thread(previewer_for, self.pipe)
        except Exception as err:  # fitted again at the first preview, where a failure shows
            log.warning("live previews not fitted at load (%s: %s); fitting at the first one", type(err).__name__, err)

    @property
    def label(self) -> str:
        """The model as output files name it: a hub id or model name as given, a local folder by
        its name only (no server path)."""
        return Path(self.name).name if Path(self.name).is_dir() else self.name

    @property
    def random_weights(self) -> bool:
        return self.name in RANDOM_WEIGHT_MODELS

    @property
    def knows_words(self) -> bool:
        """True for a model that declares the only words it understands (the toy model)."""
        return bool(self.pipe and self.pipe.info.vocabulary)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The only words the model understands; empty: any text."""
        return self.pipe.info.vocabulary if self.pipe else ()

    @property
    def lora_names(self) -> tuple[str, ...]:
        """The LoRAs found beside the model (its `loras/` folder and models/loras), for the cards."""
        return tuple(available_loras(self.pipe)) if self.pipe else ()

    @property
    def examples(self) -> tuple[str, str]:
        """A person's prompt and a setting for the page's placeholders, in words the model knows."""
        if not self.knows_words:
            return DEFAULT_EXAMPLES
        known = all(not unknown_words(text, self.vocabulary) for text in TOY_EXAMPLES)
        return TOY_EXAMPLES if known else ("", "")

    def describe(self) -> str:
        """One line of Markdown for the UI: which model is active and what to expect of it."""
        if self.error:
            name, reason = code_span(Path(self.name).name or self.name), code_span(without_server_paths(self.error))
            return f"**Model {name} could not be loaded** - {reason}"
        pipe = self.pipe
        kind = "SDXL" if pipe.is_sdxl else "SD 1.x"
        size = f"native {pipe.resolution} px" if pipe.resolution else "generated at the canvas size"
        where = f"{kind}, {size}; {pipe.device.type}, {str(pipe.dtype).replace('torch.', '')}"
        text = f"Model: **`{Path(self.name).name or self.name}`** ({where})"
        if self.random_weights:
            text += (
                " - random weights (untrained): its images are noise, not pictures; they show the "
                "plumbing (masks, prompts, speed). Run with `--model sd15` or `--model sdxl` for real images."
            )
        if self.knows_words:
            text += (
                " - a small model trained on a toy world of coloured stick figures; the words it "
                f"knows: {code_span(', '.join(self.pipe.info.vocabulary))}. Prompts like `a red person`, "
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


def result_scorer(pipe: FineControlPipeline, clip: str | None = None):
    """What scores the app's results: the toy world's colour check on a model that speaks only its
    words; otherwise CLIP identity when a CLIP model is here (`clip`, a folder or hub id, default
    openai/clip-vit-base-patch32, from a folder or the hub cache: never downloaded); else None.
    CLIP runs on the CPU (a few crops per result), outside the GPU that ZeroGPU lends per call."""
    from finecontrol.metrics import DEFAULT_CLIP, ClipIdentity
    from finecontrol.models import ModelNotAvailableError
    from finecontrol.toyworld.world import VOCABULARY

    if pipe.info.vocabulary and set(pipe.info.vocabulary) <= set(VOCABULARY):
        return ToyScores(require_setting=False)
    try:
        return ClipIdentity(clip or DEFAULT_CLIP, device="cpu", local_only=True)
    except ModelNotAvailableError as err:
        log.info("no CLIP model for the results' identity scores (%s)", err)
    except Exception as err:  # the scores are optional: the app starts without them
        log.warning("CLIP for the results' identity scores could not be loaded: %s: %s", type(err).__name__, err)
    return None
