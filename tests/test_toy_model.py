"""The shipped toy model: the method's effect, guarded (fails, never skips, if the weights are missing)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from finecontrol.models import TOY_MODEL
from finecontrol.scene import load_scene
from finecontrol.settings import Settings, knobs
from finecontrol.toyworld.evaluate import evaluate, from_scene, score_image
from finecontrol.toyworld.world import SIZE

# The shipped weights score finecontrol 1.0 vs controlnet 0.53 identity on this guard set
# (16 scenes, seed 2024, N=2); the floor is the project's target at N=2.
IDENTITY_FLOOR = 0.85
MARGIN_OVER_CONTROLNET = 0.2


@pytest.mark.slow
def test_per_person_prompts_keep_identities_where_one_global_prompt_does_not(toy, tmp_path):
    results = evaluate(toy, people=[2], scenes=16, out=tmp_path, seed=2024, methods=("finecontrol", "controlnet"))
    fine, plain = results["finecontrol"]["2"], results["controlnet"]["2"]
    assert fine["persons"] == plain["persons"] == 32
    assert fine["identity_accuracy"] >= IDENTITY_FLOOR, results
    assert fine["identity_accuracy"] >= plain["identity_accuracy"] + MARGIN_OVER_CONTROLNET, results
    assert fine["pose_fidelity"] >= 0.8 and fine["setting_accuracy"] >= 0.8, results


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["two_people", "three_people", "four_people"])
def test_app_presets_draw_each_person_in_their_colour_on_their_setting(toy, preset):
    """The app's toy presets (512 px canvases) at the model's own defaults, scored at 64 px."""
    scene = load_scene(f"assets/scenes/toy/{preset}.json")
    result = toy(scene, replace(toy.default_settings(), seed=0))
    assert result.image.size == (SIZE, SIZE)
    score = score_image(np.asarray(result.image), from_scene(scene))
    assert score["setting"] and all(score["identity"]), score


def test_the_models_own_defaults_replace_the_papers_where_its_folder_declares_them(toy):
    declared = json.loads((TOY_MODEL / "finecontrol.json").read_text())["defaults"]
    assert declared  # the toy model declares some (guidance 3, no harmony phase, no suffix, ...)
    defaults, paper = toy.default_settings(), Settings()
    for name in knobs():
        assert getattr(defaults, name) == declared.get(name, getattr(paper, name)), name


def test_evaluation_runs_at_the_models_defaults(toy, tmp_path):
    class Recorder:
        """The toy model, recording the settings it is asked for (and running them with 2 steps)."""

        seen = []

        def default_settings(self):
            return toy.default_settings()

        def __call__(self, scene, settings):
            self.seen.append(settings)
            return toy(scene, replace(settings, steps=2))

    evaluate(Recorder(), people=[2], scenes=2, out=tmp_path, methods=("finecontrol", "controlnet"))
    assert [(s.method, s.seed) for s in Recorder.seen] == [
        ("finecontrol", 1234),
        ("controlnet", 1234),
        ("finecontrol", 1235),
        ("controlnet", 1235),
    ]
    assert all(
        replace(s, method="finecontrol", seed=0) == replace(toy.default_settings(), seed=0) for s in Recorder.seen
    )
