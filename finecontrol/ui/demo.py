"""The FineControl Studio layout: `build_demo(engine)` wires the pose canvas, the prompts, the
knobs and the outputs to the handlers. It takes the engine as an argument so tests can run the
whole UI on the tiny model."""

from __future__ import annotations

from functools import lru_cache

import gradio as gr

from finecontrol.models import DEFAULT_ANNOTATORS, load_pose_detector
from finecontrol.pipeline import METHODS, SCHEDULERS, Settings, random_seed
from finecontrol.scene import DEFAULT_NEGATIVE_PROMPT
from finecontrol.ui import handlers
from finecontrol.ui.editor import PoseEditor
from finecontrol.ui.engine import Engine

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


def build_demo(engine: Engine, annotators: str = DEFAULT_ANNOTATORS) -> gr.Blocks:
    """The app for `engine`; `annotators` is where pose-from-photo finds its detector weights.
    Launch it with `css=CSS`."""
    defaults = engine.pipe.default_settings() if engine.pipe else Settings()
    default_negative = engine.pipe.info.get("negative_prompt", DEFAULT_NEGATIVE_PROMPT) if engine.pipe else DEFAULT_NEGATIVE_PROMPT
    presets = handlers.PRESETS / "toy" if engine.knows_words else handlers.PRESETS

    @lru_cache(maxsize=1)
    def detector():
        return load_pose_detector(annotators)

    # analytics off: the app never calls home; cached outputs older than an hour are deleted hourly
    with gr.Blocks(title="FineControl Studio", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(engine.describe(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=3):
                editor = PoseEditor(elem_id="pose-editor")
                setting = gr.Textbox(label="Setting, shared by everyone", placeholder="in a forest",
                                     elem_id="setting")
                negative = gr.Textbox(label="Negative prompt, for everyone", value=default_negative,
                                      elem_id="negative")
                with gr.Row():
                    masks_button = gr.Button("Show masks", elem_id="masks-button")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    compare_button = gr.Button("Compare methods", elem_id="compare-button")
                with gr.Accordion("Advanced settings (the model's defaults)", open=False):
                    with gr.Row():
                        method = gr.Dropdown(list(METHODS), value=defaults.method, label="Method")
                        scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler")
                        steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="Steps")
                    with gr.Row():
                        guidance = gr.Slider(0, 20, value=defaults.guidance_scale, step=0.5, label="Guidance scale")
                        strength = gr.Slider(0, 3, value=defaults.control_strength, step=0.05,
                                             label="Control strength (people without their own)")
                    with gr.Row():
                        harmony = gr.Slider(0, 1, value=defaults.harmony, step=0.05,
                                            label="Harmony (fraction of final steps with soft masks)")
                        temperature = gr.Number(value=defaults.temperature, label="Mask temperature")
                    with gr.Row():
                        dilation = gr.Slider(0, 255, value=0, step=1, label="Mask dilation, px (0: automatic, shorter side / 8)")
                        blur = gr.Slider(0, 8, value=defaults.mask_blur, step=0.5, label="Mask blur sigma, px")
                    with gr.Row():
                        seed = gr.Number(value=defaults.seed, precision=0, label="Seed", elem_id="seed")
                        random_button = gr.Button("Random seed", size="sm")
                        extra_seeds = gr.Slider(0, 3, value=0, step=1, label="Compare: extra seeds")
                    suffix = gr.Textbox(value=defaults.quality_suffix, label="Quality suffix")
                with gr.Accordion("Import / export", open=False):
                    with gr.Row():
                        export_button = gr.Button("Export scene JSON", elem_id="export-button")
                        export_file = gr.File(label="Scene file", elem_id="export-file", interactive=False)
                    import_file = gr.File(label="Import: scene JSON, OpenPose JSON or a FineControl PNG",
                                          file_types=[".json", ".png"], elem_id="import-file")
                    with gr.Row():
                        photo = gr.Image(label="Pose from a photo", type="numpy", sources=["upload"])
                        photo_button = gr.Button("Add the people in this photo")
                preset = gr.Textbox(visible=False)
                gr.Examples([[name] for name in handlers.preset_names(presets)], inputs=[preset],
                            label="Preset scenes", fn=lambda name: handlers.load_preset(name, presets),
                            outputs=[editor, setting, negative], run_on_click=True, cache_examples=False)
            with gr.Column(scale=2):
                result = gr.Image(label="Result (the PNG carries its scene)", type="filepath", format="png",
                                  height=420, elem_id="result")
                with gr.Row():
                    control_map = gr.Image(label="Control map", height=200, elem_id="control-map")
                    mask_image = gr.Image(label="Masks: who owns which region", height=200, elem_id="mask-image")
                prompts_used = gr.Markdown(elem_id="prompts-used")
                comparison = gr.Image(label="Comparison", type="filepath", format="png", elem_id="comparison")

        knobs = [method, steps, guidance, strength, harmony, temperature, dilation, blur, seed, scheduler, suffix]
        scene_inputs = [editor, setting, negative]

        def run_generate(value, setting_text, negative_text, *knob_values, progress=gr.Progress()):
            yield from handlers.generate(engine, value, setting_text, negative_text, *knob_values, progress=progress)

        def run_compare(value, setting_text, negative_text, extra, *knob_values, progress=gr.Progress()):
            return handlers.compare(engine, value, setting_text, negative_text, extra, *knob_values, progress=progress)

        def run_photo(image, value, setting_text, negative_text):
            return handlers.pose_from_photo(lambda img: detector()(img), image, value, setting_text, negative_text)

        masks_button.click(handlers.masks_preview, scene_inputs + knobs, mask_image, api_name="masks")
        generate_button.click(run_generate, scene_inputs + knobs, [result, control_map, mask_image, prompts_used],
                              api_name="generate")
        compare_button.click(run_compare, scene_inputs + [extra_seeds] + knobs, comparison, api_name="compare")
        export_button.click(handlers.export_scene, scene_inputs, export_file, api_name="export_scene")
        import_file.upload(handlers.import_file, import_file, scene_inputs + knobs, api_name="import_scene")
        photo_button.click(run_photo, [photo] + scene_inputs, editor, api_name="pose_from_photo")
        random_button.click(random_seed, None, seed, api_name=False)
    return demo
