"""Score generated toy scenes: identity accuracy, pose fidelity and setting accuracy per method.

`python -m finecontrol.toyworld evaluate --out DIR [--scenes K] [--people 2,3,4] [--seed S]
[--methods M,...] [--spread F]` is a batch run (`finecontrol.experiments`: DIR/images, per-person
results.json and results.csv, report.html; resumable) with the toy world's scores, plus
DIR/summary.json, shaped {method: {N: {identity_accuracy, pose_fidelity, setting_accuracy,
persons}}}, and DIR/summary.png, a bar chart.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from finecontrol.pipeline import FineControlPipeline
from finecontrol.pose import LIMBS
from finecontrol.scene import Person, Scene
from finecontrol.settings import COMPARED_METHODS, Settings
from finecontrol.toyworld.world import BACKGROUNDS, COLORS, SETTINGS, SIZE, SKIN, ToyScene, random_scene

BACKGROUND_DISTANCE = 60.0  # RGB distance above which a pixel is not the drawn background
# Where a person's colour is scored: the limbs without the head's (the first 12 of LIMBS) and the torso outline.
BODY_LINES = LIMBS[:12] + ((2, 8), (5, 11), (8, 11))


def to_scene(toy: ToyScene) -> Scene:
    """The engine's scene for a toy scene: one prompt per person, the setting phrase, no negative."""
    people = [Person(keypoints=pose, prompt=toy.person_prompt(i)) for i, pose in enumerate(toy.poses)]
    return Scene(width=SIZE, height=SIZE, people=people, setting=SETTINGS[toy.setting], negative_prompt="")


def from_scene(scene: Scene, require_setting: bool = True) -> ToyScene:
    """The toy scene an engine scene describes in toy words ("a red person", "on grass"), its poses
    scaled from the canvas to 64 px: what `score_image` needs to score any generated 64 px image.
    Without `require_setting` a setting that is not a toy one is taken as None (not scored)."""
    setting = {phrase: word for word, phrase in SETTINGS.items()}.get(scene.setting.strip())
    colors = [color_word(p.prompt) for p in scene.people]
    if (setting is None and require_setting) or any(c not in COLORS for c in colors):
        raise ValueError(f"not a toy scene: setting {scene.setting!r}, prompts {[p.prompt for p in scene.people]}")
    scale = np.array([SIZE / scene.width, SIZE / scene.height, 1.0])
    return ToyScene(setting, colors, [p.keypoints * scale for p in scene.people])


def color_word(prompt: str) -> str:
    """The colour word of a toy person's prompt ("a red person" -> "red"); else what is left."""
    return prompt.strip().removeprefix("a ").removesuffix(" person")


def is_toy_scene(scene: Scene) -> bool:
    """Whether every person's prompt is a toy colour phrase ("a red person"), which ToyScores needs."""
    return all(color_word(p.prompt) in COLORS for p in scene.people)


def body_masks(poses: list[np.ndarray]) -> list[np.ndarray]:
    """Each person's thin body mask (1 px limbs and torso outline, head left out), minus the
    pixels another person's mask also covers."""
    masks = []
    for pose in poses:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for a, b in BODY_LINES:
            cv2.line(mask, tuple(np.round(pose[a, :2]).astype(int)), tuple(np.round(pose[b, :2]).astype(int)), 1, 1)
        masks.append(mask.astype(bool))
    shared = np.sum(masks, axis=0) > 1
    return [m & ~shared for m in masks]


def drawn_background(image: np.ndarray, poses: list[np.ndarray]) -> np.ndarray:
    """The background colour the image actually drew: the median far from every person."""
    near = np.zeros((SIZE, SIZE), np.uint8)
    for pose in poses:
        xs, ys = pose[:, 0], pose[:, 1]
        cv2.rectangle(near, (int(xs.min()) - 6, int(ys.min()) - 8), (int(xs.max()) + 6, int(ys.max()) + 6), 1, -1)
    far = image[near == 0]
    return np.median(far if len(far) >= 32 else image.reshape(-1, 3), axis=0)


def score_people(image: np.ndarray, toy: ToyScene) -> tuple[list[dict], bool | None]:
    """Each person's identity (their colour wins the vote on their body) and pose fidelity (share
    of their body pixels that are not background), None for a person whose body mask is empty;
    and whether the image's background is the scene's setting (None for a scene without one)."""
    pixels = image.astype(np.float32)
    background = drawn_background(pixels, toy.poses)
    setting_guess = min(BACKGROUNDS, key=lambda s: np.linalg.norm(background - BACKGROUNDS[s]))
    names = list(COLORS)
    palette = np.array([COLORS[c] for c in names] + [SKIN, tuple(background)], np.float32)
    people = []
    for mask, color in zip(body_masks(toy.poses), toy.colors):
        body = pixels[mask]
        if len(body) == 0:
            people.append({"toy_identity": None, "toy_pose": None})
            continue
        nearest = np.argmin(np.linalg.norm(body[:, None] - palette[None], axis=2), axis=1)
        votes = np.bincount(nearest[nearest < len(names)], minlength=len(names))
        identity = bool(votes.sum() and names[int(votes.argmax())] == color)
        fidelity = float((np.linalg.norm(body - background, axis=1) > BACKGROUND_DISTANCE).mean())
        people.append({"toy_identity": identity, "toy_pose": round(fidelity, 6)})
    return people, None if toy.setting is None else setting_guess == toy.setting


def score_image(image: np.ndarray, toy: ToyScene) -> dict:
    """Per-person identity and pose fidelity (people with an empty body mask left out), and the
    setting, for one generated image."""
    people, setting = score_people(image, toy)
    scored = [p for p in people if p["toy_identity"] is not None]
    return {
        "identity": [p["toy_identity"] for p in scored],
        "fidelity": [p["toy_pose"] for p in scored],
        "setting": setting,
    }


class ToyScores:
    """The toy world's scores as a batch scorer (`finecontrol.experiments`): per person
    `toy_identity` and `toy_pose`; the image's `toy_setting` on its first person's row only (None
    on the others), so that its mean over rows is per image."""

    name = "toy"
    source = ""

    def __init__(self, require_setting: bool = True):
        self.require_setting = require_setting

    def score(self, image: Image.Image, scene: Scene) -> list[dict]:
        """Raises ValueError for a scene that is not in toy words."""
        toy = from_scene(scene, self.require_setting)
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.BILINEAR)
        pixels = np.asarray(image)
        people, setting = score_people(pixels, toy)
        return [p | {"toy_setting": setting if i == 0 else None} for i, p in enumerate(people)]


def held_out_scenes(people: int, scenes: int, seed: int = 1234, spread: float = 1.0) -> list[ToyScene]:
    """The evaluation's fixed held-out scenes with `people` people (distinct colours)."""
    rng = np.random.default_rng(seed + people)
    return [random_scene(rng, people=people, spread=spread) for _ in range(scenes)]


def evaluate(
    pipe: FineControlPipeline,
    people: list[int],
    scenes: int,
    out: Path,
    seed: int = 1234,
    methods=COMPARED_METHODS,
    settings: Settings | None = None,
    progress=None,
    spread: float = 1.0,
    model: str = "toy",
) -> dict:
    """Held-out scenes (fixed seeds, distinct colours) generated by every method with the same noise
    (scene k with seed `seed + k`), at `settings` (default: the model's own defaults, from its
    finecontrol.json); `spread` < 1 packs people closer together (`random_scene`). A batch run
    (`finecontrol.experiments`) in `out`: images, per-person records and report.html; a re-run skips
    what is done (`model` names the model in the records: another model's are made again).
    Returns {method: {N: {identity_accuracy, pose_fidelity, setting_accuracy, persons}}}."""
    from finecontrol import experiments

    settings = settings or pipe.default_settings()
    inputs, items = [], []
    for n in people:
        for k, toy in enumerate(held_out_scenes(n, scenes, seed, spread)):
            inputs.append(experiments.SceneInput(f"n{n}-{k:03d}", to_scene(toy)))
            items += [experiments.Item(inputs[-1].name, method, seed + k) for method in methods]
    experiments.run_items(pipe, inputs, items, out, settings, [ToyScores()], progress, model=model)
    records = experiments.read_records(out, items)
    experiments.write_results(out, records)
    experiments.write_report(out, records, title="Toy world evaluation")
    return summarise(records, people, methods)


def summarise(records: list[dict], people: list[int], methods) -> dict:
    """{method: {N: scores}} from the evaluation's batch records (scenes named `n{N}-{k}`): identity
    and pose over the people with a body mask, setting over the images."""
    results = {m: {} for m in methods}
    for n in people:
        for method in methods:
            chosen = [r for r in records if r["method"] == method and r["scene"].startswith(f"n{n}-")]
            scored = [p for r in chosen for p in r["people"] if p["toy_identity"] is not None]
            results[method][str(n)] = {
                "identity_accuracy": round(float(np.mean([p["toy_identity"] for p in scored])), 4),
                "pose_fidelity": round(float(np.mean([p["toy_pose"] for p in scored])), 4),
                "setting_accuracy": round(float(np.mean([r["people"][0]["toy_setting"] for r in chosen])), 4),
                "persons": len(scored),
            }
    return results


def write_summary(results: dict, out: Path) -> None:
    """summary.json (the scores per method and number of people) and a bar chart (summary.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    methods = list(results)
    counts = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, metric in zip(axes, ("identity_accuracy", "pose_fidelity", "setting_accuracy")):
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            ax.bar(
                [i + j * width for i in range(len(counts))],
                [results[method][n][metric] for n in counts],
                width,
                label=method,
            )
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(counts))], [f"N={n}" for n in counts])
        ax.set_ylim(0, 1)
        ax.set_title(metric.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)


def print_table(results: dict) -> None:
    print(f"{'method':<16}{'N':>3}{'identity':>10}{'pose':>8}{'setting':>9}{'persons':>9}")
    for method, by_n in results.items():
        for n, r in by_n.items():
            print(
                f"{method:<16}{n:>3}{r['identity_accuracy']:>10.3f}{r['pose_fidelity']:>8.3f}"
                f"{r['setting_accuracy']:>9.3f}{r['persons']:>9}"
            )
