"""The toy world: 64x64 scenes of coloured stick figures on four settings, with captions.

A scene is a setting word, which picks the background, and 1-4 people, each a BODY-18 pose and a
colour word. The image draws each person as a filled torso, thick limbs and a skin-tone head in
their colour; the ControlNet condition is the engine's OpenPose rendering of the same poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from finecontrol.pose import TEMPLATE_XY, mirror, rotate
from finecontrol.render import skeleton_image

SIZE = 64
# Control images at 64 px: the annotator's drawing, scaled down.
STICK_WIDTH, JOINT_RADIUS = 1, 2
SETTINGS = {"grass": "on grass", "snow": "in snow", "beach": "on a beach", "night": "at night"}
BACKGROUNDS = {"grass": (70, 150, 50), "snow": (236, 240, 246), "beach": (222, 196, 140), "night": (22, 28, 78)}
COLORS = {
    "red": (220, 30, 30),
    "blue": (40, 80, 235),
    "purple": (135, 45, 195),
    "orange": (250, 140, 10),
    "pink": (250, 110, 200),
    "cyan": (20, 225, 235),
}
SKIN = (235, 190, 150)
VOCABULARY = sorted({"a", "person", "and"} | {w for phrase in SETTINGS.values() for w in phrase.split()} | set(COLORS))

_TORSO = (2, 5, 11, 8)
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13), (1, 0))


@dataclass
class ToyScene:
    setting: str
    colors: list[str]
    poses: list[np.ndarray]  # (18, 3) in 64x64 pixels

    def person_prompt(self, i: int) -> str:
        return f"a {self.colors[i]} person"

    def caption(self, order: list[int] | None = None) -> str:
        order = range(len(self.colors)) if order is None else order
        return " and ".join(self.person_prompt(i) for i in order) + " " + SETTINGS[self.setting]


def random_pose(rng: np.random.Generator, height: float, center_x: float, feet_y: float) -> np.ndarray:
    """A jittered, possibly mirrored and leaning template pose."""
    names = list(TEMPLATE_XY)
    xy = np.asarray(TEMPLATE_XY[names[rng.integers(len(names))]], dtype=np.float64)
    xy = xy + rng.normal(0, 0.025, xy.shape)
    pose = np.concatenate([xy * height + (center_x, feet_y), np.ones((18, 1))], axis=1)
    if rng.random() < 0.5:
        pose = mirror(pose)
    return rotate(pose, rng.normal(0, 6))


def random_scene(
    rng: np.random.Generator, people: int | None = None, setting: str | None = None, spread: float = 1.0
) -> ToyScene:
    """1-4 people with distinct colours, spread across the width, on a random setting.

    `spread` < 1 packs them towards the centre (0.5: half the usual distance between neighbours,
    so that their masks overlap and their bodies often touch: a crowded scene).
    """
    n = int(rng.integers(1, 5)) if people is None else people
    setting = setting or list(SETTINGS)[rng.integers(len(SETTINGS))]
    colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=False)]
    tallest = {1: 52, 2: 46, 3: 40, 4: 36}[n]
    slots = (np.arange(n) + 0.5) / n * SIZE
    if spread != 1.0:
        slots = SIZE / 2 + (slots - SIZE / 2) * spread
    poses = []
    for x in rng.permutation(slots):
        height = rng.uniform(tallest - 8, tallest)
        poses.append(
            random_pose(rng, height, x + rng.normal(0, SIZE / n * 0.1 * spread), rng.uniform(SIZE - 6, SIZE - 1))
        )
    return ToyScene(setting, colors, poses)


def draw_background(setting: str, rng: np.random.Generator) -> np.ndarray:
    image = np.empty((SIZE, SIZE, 3), np.float32)
    image[:] = BACKGROUNDS[setting]
    image += rng.normal(0, 6, (SIZE, SIZE, 1))
    if setting == "grass":
        speckles = rng.random((SIZE, SIZE)) < 0.08
        image[speckles] = (40, 110, 30)
    elif setting == "night":
        stars = rng.random((SIZE, SIZE)) < 0.015
        image[stars] = (250, 250, 220)
    return image.clip(0, 255).astype(np.uint8)


def draw_person(image: np.ndarray, pose: np.ndarray, color: tuple[int, int, int]) -> None:
    """A filled torso, 3 px limbs and a skin-tone head, in place."""
    height = np.ptp(pose[:, 1])
    torso = np.round(pose[list(_TORSO), :2]).astype(np.int32)
    cv2.fillConvexPoly(image, torso, color)
    for a, b in _LIMBS:
        cv2.line(
            image,
            tuple(np.round(pose[a, :2]).astype(int)),
            tuple(np.round(pose[b, :2]).astype(int)),
            color,
            thickness=3,
        )
    head = tuple(np.round(pose[0, :2]).astype(int))
    cv2.circle(image, head, max(2, int(round(height * 0.08))), SKIN, thickness=-1)


def render_scene(scene: ToyScene, rng: np.random.Generator) -> np.ndarray:
    """The 64x64 RGB image of a scene."""
    image = draw_background(scene.setting, rng)
    for pose, color in zip(scene.poses, scene.colors):
        draw_person(image, pose, COLORS[color])
    return image


def condition_image(poses: list[np.ndarray]) -> np.ndarray:
    """The OpenPose control image of the poses at 64 px, drawn by the engine's renderer."""
    return skeleton_image(poses, (SIZE, SIZE), (SIZE, SIZE), STICK_WIDTH, JOINT_RADIUS)
