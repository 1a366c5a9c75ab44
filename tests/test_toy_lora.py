"""The toy stripes LoRA: the drawing, the stripe detector, the shipped file, and its effect per
person and global (fails, never skips, if the file is missing)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from finecontrol.models import TOY_MODEL
from finecontrol.toyworld.lora import (
    LORA_NAME,
    STRIPE_THRESHOLD,
    body_region,
    detector_check,
    draw_striped_person,
    evaluate_lora,
    lora_rank,
    person_stripes,
    render_striped_scene,
    stripe_rows,
)
from finecontrol.toyworld.world import COLORS, SIZE, random_scene, render_scene

SHIPPED = TOY_MODEL / "loras" / f"{LORA_NAME}.safetensors"


def test_striped_person_is_the_plain_person_with_bands_cut_out_of_the_body():
    rng = np.random.default_rng(3)
    toy = random_scene(rng, people=1)
    background = np.full((SIZE, SIZE, 3), 77, np.uint8)
    plain, striped = background.copy(), background.copy()
    from finecontrol.toyworld.world import draw_person

    draw_person(plain, toy.poses[0], COLORS[toy.colors[0]])
    draw_striped_person(striped, toy.poses[0], COLORS[toy.colors[0]])
    changed = np.any(plain != striped, axis=2)
    body, cut = body_region(toy.poses[0]), stripe_rows()[:, None]
    assert changed.any() and not (changed & ~(body & cut)).any()  # only the cut rows of the body change
    assert (striped[body & cut] == 77).all()  # what was behind shows there
    assert (striped[body & ~cut] == COLORS[toy.colors[0]]).all()  # the other bands keep the colour
    # the same scene and stream: the world's render, but for the stripes
    a = render_scene(toy, np.random.default_rng(5))
    b = render_striped_scene(toy, np.random.default_rng(5), [False])
    assert np.array_equal(a, b)


def test_stripe_detector_tells_striped_from_plain_people_in_world_renders():
    check = detector_check(scenes=60, seed=11)
    assert check["striped_detected"] >= 0.98, check
    assert check["plain_detected"] <= 0.03, check


def test_stripe_detector_scores_each_person_on_their_own_region():
    rng = np.random.default_rng(8)
    toy = random_scene(rng, people=3)
    image = render_striped_scene(toy, rng, [False, True, False])
    scores = person_stripes(image, toy)
    assert scores[1] > STRIPE_THRESHOLD > max(scores[0], scores[2]), scores


def test_shipped_lora_is_small_low_rank_diffusers_format_with_its_record():
    from diffusers import StableDiffusionPipeline

    assert SHIPPED.stat().st_size < 1_000_000
    assert lora_rank(SHIPPED) <= 8
    state = StableDiffusionPipeline.lora_state_dict(str(SHIPPED))[0]
    assert state and all(k.startswith("unet.") and ("lora_A" in k or "lora_B" in k) for k in state)
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert record["settings"]["rank"] <= 8 and record["seconds"] > 0 and "versions" in record


# The guard set: 12 held-out scenes at the model's defaults. The shipped LoRA's numbers on the
# 64-scene evaluation are in assets/toyworld/lora/results.md; on this set (measured): no LoRA 0/12
# and 0/12 striped, on person 1: 10/12 and 0/12, global: 10/12 and 12/12, identity 1.0 throughout;
# the floors leave a scene of room.
@pytest.mark.slow
def test_shipped_lora_stripes_its_person_only_and_everyone_when_global(toy):
    evaluation = evaluate_lora(toy, LORA_NAME, scenes=12, seed=2024, conditions=("none", "person1", "global"))
    r = evaluation["results"]
    people = {c: [round(v[f"person{i}_striped"] * 12) for i in (1, 2)] for c, v in r.items()}  # of 12
    assert people["none"][0] <= 1 and people["none"][1] <= 1, r
    assert people["person1"][0] >= 9, r
    assert people["person1"][1] <= 1, r  # no bleed onto the other person
    assert people["global"][0] >= 9 and people["global"][1] >= 9, r
    # the person without the LoRA is drawn as without any: same score as in the plain image
    assert abs(r["person1"]["person2_score"] - r["none"]["person2_score"]) < 3, r
    # identities kept: the bands keep each person's colour
    assert min(v["identity_accuracy"] for v in r.values()) >= 0.95, r


@pytest.mark.slow
def test_scale_zero_is_no_lora(toy):
    from finecontrol.scene import LoraRef
    from finecontrol.toyworld.evaluate import to_scene

    toy_scene = random_scene(np.random.default_rng(99), people=2)
    settings = replace(toy.default_settings(), seed=5, steps=6)
    plain = np.asarray(toy(to_scene(toy_scene), settings).image)
    scene = to_scene(toy_scene)
    scene.people[0].loras = [LoraRef(LORA_NAME, 0.0)]
    assert np.array_equal(np.asarray(toy(scene, settings).image), plain)
