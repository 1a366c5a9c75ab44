"""The FineControl Studio layout: `build_demo(engine)` wires the pose canvas, the prompts, the
knobs and the outputs to the handlers. It takes the engine as an argument so tests can run the
whole UI on the tiny model."""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import gradio as gr
import numpy as np
from gradio.data_classes import ImageData
from PIL import Image

from finecontrol.models import DEFAULT_ANNOTATORS, load_pose_detector
from finecontrol.scene import DEFAULT_NEGATIVE_PROMPT
from finecontrol.settings import Settings, knobs, random_seed
from finecontrol.ui import handlers
from finecontrol.ui.editor import PoseEditor
from finecontrol.ui.engine import Engine, call_cancellable, iterate_cancellable

INTRO = """# FineControl Studio
Compose several people, **each with their own pose and their own description**, in one scene
(FineControlNet, arXiv 2312.09252). Add people on the canvas, drag their joints, write a prompt for
each numbered person, describe the setting, then **Generate**. **Show masks** shows which region
each person's prompt controls; **Compare** renders the same seed with plain ControlNet and
MultiControlNet."""


# Small model outputs (128 px for the tiny model) are shown scaled up to fill their boxes.
CSS = """
#result img, #control-map img, #mask-image img, #comparison img { width: 100%; height: 100%; object-fit: contain; }
"""


# Gradio's queue loop wakes every millisecond while idle or busy (`sleep_when_free`), 6.5 % of a
# core; on 2 cores those wake-ups made a toy-model generation in the app 0.14 s slower (0.87 s
# against 0.74 s). 10 ms (1.5 % of a core) is far below what a person notices before an event starts.
QUEUE_POLL_SECONDS = 0.01
# Largest upload Gradio accepts (`launch(max_file_size=...)`): scene JSON, FineControl PNGs and photos.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Gradio deletes the files it cached for this app (results, grids, uploads) every
# CACHE_SWEEP_SECONDS once they are older than CACHE_MAX_SECONDS (`gr.Blocks(delete_cache=...)`).
CACHE_SWEEP_SECONDS, CACHE_MAX_SECONDS = 300, 1800


def queue(demo: gr.Blocks, max_size: int = 20) -> gr.Blocks:
    """`demo.queue(...)` as the app runs it: one event at a time per listener, at most
    `max_size` waiting, and the queue's idle polling slowed to QUEUE_POLL_SECONDS."""
    demo.queue(max_size=max_size, default_concurrency_limit=1)
    demo._queue.sleep_when_free = QUEUE_POLL_SECONDS  # Gradio has no public setting for it
    return demo


class InlineImage(gr.Image):
    """A gr.Image whose in-memory images (PIL or arrays: live previews, the control map, the
    masks) travel inside the update as a `format` data URL, so neither the page nor an API client
    fetches a file for them (gradio_client spends about 20 ms on each file, and fetches the last
    update of a stream twice); a file path (the result PNG with its scene) stays a file."""

    is_template = True  # the browser side is gr.Image's own

    def postprocess(self, value):
        if isinstance(value, (Image.Image, np.ndarray)):
            return ImageData(url=data_url(value, self.format), orig_name=f"{self.elem_id or 'image'}.{self.format}")
        return super().postprocess(value)


class PhotoInput(gr.Image):
    """A gr.Image input handed to the handler as the uploaded file's path, undecoded: gr.Image
    opens every upload itself, where Pillow refuses a huge one with a bare "Error"; the handler
    checks the size first and says what to do (`handlers.read_photo`)."""

    is_template = True  # the browser side is gr.Image's own

    def preprocess(self, payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


# The text boxes and the Advanced panel's inputs hand the handler their values as they came, and
# the handlers check them (`parse_scene`, `parse_settings`): Gradio's own preprocessing answers text
# in a slider or a list in a number box with a bare "Error", echoes a dropdown value that is not a
# choice whole, rounds 3.5 in a whole-number box to 4 and turns a list sent as text into "['a']",
# without a word. The browser sides are Gradio's, found through each class's first base, so each
# subclasses its Gradio component directly (a shared mixin placed first made every page load 404).
class CheckedSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


class CheckedNumber(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return payload


class CheckedDropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class CheckedTextbox(gr.Textbox):
    is_template = True

    def preprocess(self, payload):
        return payload


def data_url(image: Image.Image | np.ndarray, format: str = "webp") -> str:
    """`image` encoded as `format` in a data URL."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return f"data:image/{format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def knob_components(defaults: Settings, per_row: int = 3) -> dict[str, gr.components.Component]:
    """The Advanced panel: one control per Settings field that has a widget, built from its Knob
    (label, range, choices) and keyed by field name; `defaults` gives their values."""
    names, values = handlers.KNOB_FIELDS, handlers.knob_values(defaults)
    components = {}
    for start in range(0, len(names), per_row):
        with gr.Row():
            for name, value in zip(names[start : start + per_row], values[start : start + per_row]):
                knob, elem_id = knobs()[name], name.replace("_", "-")
                if knob.widget == "dropdown":
                    component = CheckedDropdown(list(knob.choices), value=value, label=knob.label, elem_id=elem_id)
                elif knob.widget == "slider":
                    component = CheckedSlider(
                        knob.low if knob.ui_none is None else min(knob.low, knob.ui_none),
                        knob.high,
                        value=value,
                        step=knob.ui_step,
                        label=knob.label,
                        elem_id=elem_id,
                    )
                elif knob.widget == "number":
                    component = CheckedNumber(
                        value=value, precision=0 if knob.kind == "int" else None, label=knob.label, elem_id=elem_id
                    )
                else:
                    component = CheckedTextbox(value=value, label=knob.label, elem_id=elem_id)
                components[name] = component
    return components


def build_demo(engine: Engine, annotators: str = DEFAULT_ANNOTATORS) -> gr.Blocks:
    """The app for `engine`; `annotators` is where pose-from-photo finds its detector weights.
    Launch it with `css=CSS`."""
    defaults = engine.pipe.default_settings() if engine.pipe else Settings()
    own_negative = engine.pipe.info.negative_prompt if engine.pipe else None
    default_negative = DEFAULT_NEGATIVE_PROMPT if own_negative is None else own_negative
    presets = handlers.PRESETS / "toy" if engine.knows_words else handlers.PRESETS

    @lru_cache(maxsize=1)
    def detector():
        return load_pose_detector(annotators)

    # analytics off: the app never calls home
    with gr.Blocks(
        title="FineControl Studio", analytics_enabled=False, delete_cache=(CACHE_SWEEP_SECONDS, CACHE_MAX_SECONDS)
    ) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(engine.describe(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=3):
                editor = PoseEditor(elem_id="pose-editor")
                setting = CheckedTextbox(
                    label="Setting, shared by everyone", placeholder="in a forest", elem_id="setting"
                )
                negative = CheckedTextbox(
                    label="Negative prompt, for everyone", value=default_negative, elem_id="negative"
                )
                with gr.Row():
                    masks_button = gr.Button("Show masks", elem_id="masks-button")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    compare_button = gr.Button("Compare methods", elem_id="compare-button")
                with gr.Accordion("Advanced settings (the model's defaults)", open=False):
                    knob_inputs = knob_components(defaults)
                    with gr.Row():
                        random_button = gr.Button("Random seed", size="sm")
                        extra_seeds = CheckedSlider(0, 3, value=0, step=1, label="Compare: extra seeds")
                with gr.Accordion("Import / export", open=False):
                    with gr.Row():
                        export_button = gr.Button("Export scene JSON", elem_id="export-button")
                        export_file = gr.File(label="Scene file", elem_id="export-file", interactive=False)
                    import_file = gr.File(
                        label="Import: scene JSON, OpenPose JSON or a FineControl PNG",
                        file_types=[".json", ".png"],
                        elem_id="import-file",
                    )
                    with gr.Row():
                        photo = PhotoInput(
                            label="Pose from a photo", type="filepath", image_mode=None, sources=["upload"]
                        )
                        photo_button = gr.Button("Add the people in this photo")
                preset = gr.Textbox(visible=False)
                gr.Examples(
                    [[name] for name in handlers.preset_names(presets)],
                    inputs=[preset],
                    label="Preset scenes",
                    fn=lambda name: handlers.load_preset(name, presets),
                    outputs=[editor, setting, negative],
                    run_on_click=True,
                    cache_examples=False,
                )
            with gr.Column(scale=2):
                # live previews arrive inline (webp data URLs); the result is the PNG file
                result = InlineImage(
                    label="Result (the PNG carries its scene)",
                    type="filepath",
                    format="webp",
                    height=420,
                    elem_id="result",
                )
                with gr.Row():  # shown only: sent inline as PNG, no file to fetch
                    control_map = InlineImage(label="Control map", format="png", height=200, elem_id="control-map")
                    mask_image = InlineImage(
                        label="Masks: who owns which region", format="png", height=200, elem_id="mask-image"
                    )
                prompts_used = gr.Markdown(elem_id="prompts-used")
                comparison = gr.Image(label="Comparison", type="filepath", format="png", elem_id="comparison")

        knobs = [knob_inputs[name] for name in handlers.KNOB_FIELDS]
        scene_inputs = [editor, setting, negative]

        # async, so that Gradio's cancel reaches them while a generation runs (engine.py, "Cancelling")
        async def run_generate(value, setting_text, negative_text, *knob_values, progress=gr.Progress()):
            async for update in iterate_cancellable(
                lambda cancel: handlers.generate(
                    engine, value, setting_text, negative_text, *knob_values, progress=progress, cancel=cancel
                )
            ):
                yield update

        async def run_compare(value, setting_text, negative_text, extra, *knob_values, progress=gr.Progress()):
            return await call_cancellable(
                lambda cancel: handlers.compare(
                    engine, value, setting_text, negative_text, extra, *knob_values, progress=progress, cancel=cancel
                )
            )

        def run_photo(image, value, setting_text, negative_text):
            return handlers.pose_from_photo(lambda img: detector()(img), image, value, setting_text, negative_text)

        masks_button.click(handlers.masks_preview, scene_inputs + knobs, mask_image, api_name="masks")
        generate_button.click(
            run_generate, scene_inputs + knobs, [result, control_map, mask_image, prompts_used], api_name="generate"
        )
        compare_button.click(run_compare, scene_inputs + [extra_seeds] + knobs, comparison, api_name="compare")
        export_button.click(handlers.export_scene, scene_inputs, export_file, api_name="export_scene")
        import_file.upload(handlers.import_file, import_file, scene_inputs + knobs, api_name="import_scene")
        photo_button.click(run_photo, [photo] + scene_inputs, editor, api_name="pose_from_photo")
        random_button.click(random_seed, None, knob_inputs["seed"], api_name=False)
    return demo
