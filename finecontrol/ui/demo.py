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
from finecontrol.ui.editor import PoseEditor, empty_scene
from finecontrol.ui.engine import Engine, iterate_cancellable

INTRO = """# FineControl Studio
Several people, **each with their own pose and their own description**, in one scene (FineControlNet,
arXiv 2312.09252): place skeletons on the canvas, write a prompt on each numbered card, then **Generate**.
**Show masks** shows the region each prompt controls; **Compare** renders the same seed with plain
ControlNet and MultiControlNet."""


# Small model outputs (128 px for the tiny model) are shown scaled up to fill their boxes.
CSS = """
#result img, #control-map img, #mask-image img, #comparison img { width: 100%; height: 100%; object-fit: contain; }
#intro p, #model-info p { margin: 2px 0; }
#stale-note:has(.fc-stale[hidden]) { display: none; }
.fc-stale { font-size: 13px; padding: 4px 8px; border-radius: 6px; background: #fef3c7; color: #78350f; }
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


# The last result is marked out of date once the scene or a setting differs from what it was made
# with. The page keeps two keys, both the inputs' JSON: what the running Generate was asked for
# (window.fcAskedInputs, set on click) and what the result on show was made with (window.fcResultInputs, set
# once that generation finished). Runs in the browser only, no server round trip.
STALE_NOTE = (
    '<div class="fc-stale" role="status" hidden>The scene or settings changed since this image: '
    "Generate to update it.</div>"
)
_MARK_STALE = """
    const note = document.querySelector('#stale-note .fc-stale');
    if (note) note.hidden = !(window.fcResultInputs && window.fcResultInputs !== JSON.stringify(inputs));
"""
# On Generate the page also brings the result into view where it is not (a phone's one column).
ASKED_JS = """(...inputs) => {
    window.fcAskedInputs = JSON.stringify(inputs);
    const result = document.querySelector('#result');
    const box = result && result.getBoundingClientRect();
    if (box && (box.top < 0 || box.bottom > window.innerHeight)) result.scrollIntoView({block: 'start'});
}"""
SHOWN_JS = "(...inputs) => { window.fcResultInputs = window.fcAskedInputs;" + _MARK_STALE + "}"
CHANGED_JS = "(...inputs) => {" + _MARK_STALE + "}"


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
        gr.Markdown(INTRO, elem_id="intro")
        gr.Markdown(engine.describe(), elem_id="model-info")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=360):
                editor = PoseEditor(
                    value=empty_scene(default_negative),
                    vocabulary=engine.vocabulary,
                    examples=engine.examples,
                    lora_names=engine.lora_names,
                    elem_id="pose-editor",
                )
                preset = gr.Textbox(visible=False)
                gr.Examples(
                    [[name] for name in handlers.preset_names(presets)],
                    inputs=[preset],
                    label="Preset scenes",
                    fn=lambda name: handlers.load_preset(name, presets),
                    outputs=[editor],
                    run_on_click=True,
                    cache_examples=False,
                )
            with gr.Column(scale=2, min_width=320):
                with gr.Row():
                    generate_button = gr.Button(
                        "Generate", variant="primary", elem_id="generate-button", scale=1, min_width=100
                    )
                    masks_button = gr.Button("Show masks", elem_id="masks-button", scale=1, min_width=90)
                    compare_button = gr.Button("Compare methods", elem_id="compare-button", scale=1, min_width=90)
                gr.HTML(STALE_NOTE, elem_id="stale-note", padding=False)
                # live previews arrive inline (webp data URLs); the result is the PNG file
                result = InlineImage(
                    label="Result (the PNG carries its scene)",
                    type="filepath",
                    format="webp",
                    height=400,
                    elem_id="result",
                )
                prompts_used = gr.Markdown(elem_id="prompts-used")
                # shown only: sent inline as PNG, no file to fetch
                mask_image = InlineImage(
                    label="Masks: who owns which region", format="png", height=300, elem_id="mask-image"
                )
                control_map = InlineImage(label="Control map", format="png", height=240, elem_id="control-map")
                # live previews inline (webp), then the grid PNG file, which carries its scene
                comparison = InlineImage(
                    label="Comparison (same seed)", type="filepath", format="webp", elem_id="comparison"
                )
        with gr.Row():
            with gr.Column():
                with gr.Accordion("Advanced settings (the model's defaults)", open=False):
                    knob_inputs = knob_components(defaults)
                    with gr.Row():
                        random_button = gr.Button("Random seed", size="sm")
                        extra_seeds = CheckedSlider(0, 3, value=0, step=1, label="Compare: extra seeds")
            with gr.Column():
                with gr.Accordion("Import / export", open=False):
                    export_button = gr.Button("Export scene JSON", elem_id="export-button")
                    # the file's own button, clicked by the page once the file is written: one click
                    export_file = gr.DownloadButton(visible="hidden", elem_id="export-file")
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

        knobs = [knob_inputs[name] for name in handlers.KNOB_FIELDS]

        # The page holds the setting and negative prompt in the canvas's value (None: the value's own).
        # async, so that Gradio's cancel reaches them while a generation runs (engine.py, "Cancelling")
        async def run_generate(value, *knob_values, progress=gr.Progress()):
            async for update in iterate_cancellable(
                lambda cancel: handlers.generate(
                    engine, value, None, None, *knob_values, progress=progress, cancel=cancel
                )
            ):
                yield update

        async def run_compare(value, extra, *knob_values, progress=gr.Progress()):
            async for update in iterate_cancellable(
                lambda cancel: handlers.compare(
                    engine, value, None, None, extra, *knob_values, progress=progress, cancel=cancel
                )
            ):
                yield update

        def run_masks(value, *knob_values):
            return handlers.masks_preview(value, None, None, *knob_values)

        def run_photo(image, value):
            return handlers.pose_from_photo(lambda img: detector()(img), image, value, None, None)

        def export(value):
            return handlers.export_scene(value)

        def check(value, *knob_values):
            handlers.check_scene(engine, value, *knob_values)

        def check_compare(value, extra, *knob_values):
            handlers.check_scene(engine, value, *knob_values)
            handlers.check_extra_seeds(extra)

        # Each button checks the scene first in an event of its own, with no outputs: a mistake shows as
        # a message and never marks the output panels with errors or hides the last good result.
        scene_and_knobs = [editor] + knobs
        generate_button.click(None, scene_and_knobs, None, js=ASKED_JS)
        generate_button.click(check, scene_and_knobs, None, api_name=False, show_progress="hidden").success(
            run_generate, scene_and_knobs, [result, control_map, mask_image, prompts_used], api_name="generate"
        ).success(None, scene_and_knobs, None, js=SHOWN_JS)
        masks_button.click(check, scene_and_knobs, None, api_name=False, show_progress="hidden").success(
            run_masks, scene_and_knobs, mask_image, api_name="masks"
        )
        compare_button.click(
            check_compare, [editor, extra_seeds] + knobs, None, api_name=False, show_progress="hidden"
        ).success(run_compare, [editor, extra_seeds] + knobs, comparison, api_name="compare")
        gr.on([editor.change] + [component.change for component in knobs], None, scene_and_knobs, None, js=CHANGED_JS)
        export_button.click(export, editor, export_file, api_name="export_scene").success(
            None, None, None, js="() => document.querySelector('#export-file')?.click()"
        )
        import_file.upload(handlers.import_file, import_file, [editor] + knobs, api_name="import_scene")
        photo_button.click(run_photo, [photo, editor], editor, api_name="pose_from_photo")
        random_button.click(random_seed, None, knob_inputs["seed"], api_name=False)
    return demo
