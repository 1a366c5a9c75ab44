"""A robustness study as the paper's: identity against the number of people, the distance between
them and the ratio of their sizes.

`python -m finecontrol robustness --out DIR [--model toy] [--scenes K] [--seeds 0] [--scenes-only]`
writes the scenes of each axis to DIR/scenes/AXIS/, runs each axis as a batch
(`finecontrol.experiments`) in DIR/AXIS/, and plots identity against the axis per method
(DIR/AXIS.png), all linked from DIR/report.html.

Scenes are drawn from fixed seeds. On the toy model they are toy scenes (64 px, one colour word
per person, scored by colour); on any other model, 512 px canvases with one description per
person from `DESCRIPTIONS`, scored by CLIP identity (`finecontrol.metrics`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finecontrol.pose import mirror, template_pose
from finecontrol.scene import Person, Scene
from finecontrol.toyworld.world import COLORS, SETTINGS, SIZE, ToyScene

# The values each axis takes: people in a scene (the toy model was trained on 1-4: 5 and 6 show
# its limit); the distance between two people's centres as a share of their height (0: one on
# top of the other); the height of the taller of two people over the shorter's.
AXES = {"people": [1, 2, 3, 4, 5, 6], "distance": [1.0, 0.75, 0.5, 0.25, 0.0], "scale": [1.0, 1.5, 2.0, 3.0]}
LABELS = {
    "people": "people in the scene",
    "distance": "distance between the two centres / height",
    "scale": "height of the taller / the shorter",
}
CANVAS = 512  # real models' canvas
DESCRIPTIONS = [
    "a man in a red jacket",
    "a woman in a blue dress",
    "an astronaut in a white spacesuit",
    "a knight in silver armour",
    "a chef in a white uniform",
    "a clown in a yellow costume",
]
SETTING = "in a park"
# Poses of the same height and torso, so that sizes and distances are what the axis says.
TEMPLATES = ("standing", "walking", "arms_up")


@dataclass
class StudyScene:
    """One scene of the study: its axis, the axis value and the scene itself."""

    axis: str
    value: float
    index: int
    scene: Scene

    @property
    def name(self) -> str:
        return f"{self.axis}-{self.value:g}-{self.index:02d}"


def layout(axis: str, value: float, rng: np.random.Generator, size: float) -> list[tuple[float, float, float]]:
    """(height, centre x, feet y) of each person on a square canvas of `size` pixels."""
    feet = size * 0.95
    if axis == "people":
        n = int(value)
        height = size * (0.8 if n == 1 else 0.72 - 0.05 * (n - 2))
        slots = (np.arange(n) + 0.5) / n * size
        return [(height, float(x), feet) for x in rng.permutation(slots)]
    if axis == "distance":
        height = size * 0.6
        offset = value * height / 2
        return [(height, size / 2 - offset, feet), (height, size / 2 + offset, feet)]
    if axis == "scale":
        tall = size * 0.75
        short = tall / value
        return [(tall, size * 0.3, feet), (short, size * 0.7, feet)]
    raise ValueError(f"unknown axis {axis!r}; one of {', '.join(AXES)}")


def study_scenes(axis: str, scenes: int, toy: bool, seed: int = 0) -> list[StudyScene]:
    """`scenes` scenes for each value of `axis`, the same for any run with the same seed."""
    out = []
    for value in AXES[axis]:
        rng = np.random.default_rng([seed, list(AXES).index(axis), int(value * 100)])
        for k in range(scenes):
            size = SIZE if toy else CANVAS
            people = layout(axis, value, rng, size)
            poses = [_pose(rng, h, x, feet) for h, x, feet in people]
            if toy:
                colors = [str(c) for c in rng.choice(list(COLORS), size=len(poses), replace=False)]
                setting = str(rng.choice(list(SETTINGS)))
                from finecontrol.toyworld.evaluate import to_scene

                scene = to_scene(ToyScene(setting, colors, poses))
            else:
                order = rng.permutation(len(DESCRIPTIONS))[: len(poses)]
                people_ = [Person(keypoints=p, prompt=DESCRIPTIONS[i]) for p, i in zip(poses, order)]
                scene = Scene(width=CANVAS, height=CANVAS, people=people_, setting=SETTING)
            out.append(StudyScene(axis, value, k, scene))
    return out


def _pose(rng: np.random.Generator, height: float, centre_x: float, feet_y: float) -> np.ndarray:
    """A template pose (one of TEMPLATES, mirrored half the time) scaled to `height`, its feet
    centred at (centre_x, feet_y)."""
    pose = template_pose(TEMPLATES[rng.integers(len(TEMPLATES))], centre_x, feet_y, height)
    return mirror(pose) if rng.random() < 0.5 else pose


def write_scenes(folder: Path, studies: dict[str, list[StudyScene]]) -> None:
    """Each axis's scenes as scene files, `folder/AXIS/NAME.json`."""
    for axis, chosen in studies.items():
        (folder / axis).mkdir(parents=True, exist_ok=True)
        for study in chosen:
            study.scene.save(folder / axis / f"{study.name}.json")


def identity_by_value(records: list[dict], studies: list[StudyScene], score: str) -> dict[str, list[float]]:
    """Per method: the mean of `score` over the people of each axis value's scenes."""
    value_of = {s.name: s.value for s in studies}
    values = list(dict.fromkeys(s.value for s in studies))
    result: dict[str, list[float]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        means = []
        for value in values:
            scores = [
                float(p[score])
                for r in records
                if r["method"] == method and value_of[r["scene"]] == value
                for p in r["people"]
                if p.get(score) is not None
            ]
            means.append(float(np.mean(scores)) if scores else float("nan"))
        result[method] = means
    return result


def plot(axis: str, values: list[float], curves: dict[str, list[float]], score: str, path: Path) -> None:
    """One line per method: the score's mean against the axis's values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for method, means in curves.items():
        ax.plot(values, means, marker="o", label=method)
    ax.set_xlabel(LABELS[axis])
    ax.set_ylabel(score.replace("_", " "))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(values)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_index(out: Path, axes: list[str], title: str) -> Path:
    """DIR/report.html: each axis's plot and a link to its batch report."""
    e = html.escape
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;margin:1em}}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for axis in axes:
        parts.append(f"<h2>{e(LABELS[axis])}</h2>")
        if (out / f"{axis}.png").exists():  # no plot without scores (--metrics none)
            parts.append(f'<p><img src="{e(axis)}.png" alt="{e(axis)}"></p>')
        parts.append(f'<p><a href="{e(axis)}/report.html">every image of this axis</a></p>')
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
