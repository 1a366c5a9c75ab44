"""OpenPose BODY-18 keypoints: constants, pose templates and pure geometric transforms.

A pose is a float array of shape (18, 3): x and y in pixels, and a confidence where 0 means the
keypoint is hidden. Every function here returns a new array and leaves its input untouched.
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# The 17 limbs of the OpenPose body model, as (start, end) keypoint indices, in the order the
# annotator draws them (each limb takes the colour of the same index in LIMB_COLORS).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# The annotator's fixed palette (RGB): limb k uses colour k, keypoint j uses colour j.
LIMB_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)

# Index pairs swapped when a pose is mirrored (the person's right becomes their left).
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))

# Templates in body units: x right, y down, the figure about one unit tall, origin between the
# feet. "Right" keypoints are the person's right, drawn on the image's left (facing the viewer).
TEMPLATE_XY: dict[str, tuple[tuple[float, float], ...]] = {
    "standing": (
        (0.0, -0.92),
        (0.0, -0.82),
        (-0.10, -0.82),
        (-0.13, -0.67),
        (-0.14, -0.53),
        (0.10, -0.82),
        (0.13, -0.67),
        (0.14, -0.53),
        (-0.06, -0.50),
        (-0.07, -0.27),
        (-0.07, -0.04),
        (0.06, -0.50),
        (0.07, -0.27),
        (0.07, -0.04),
        (-0.025, -0.935),
        (0.025, -0.935),
        (-0.05, -0.92),
        (0.05, -0.92),
    ),
    "walking": (
        (0.0, -0.92),
        (0.0, -0.82),
        (-0.10, -0.82),
        (-0.06, -0.67),
        (0.0, -0.55),
        (0.10, -0.82),
        (0.17, -0.68),
        (0.21, -0.56),
        (-0.06, -0.50),
        (-0.11, -0.28),
        (-0.17, -0.05),
        (0.06, -0.50),
        (0.09, -0.28),
        (0.13, -0.03),
        (-0.025, -0.935),
        (0.025, -0.935),
        (-0.05, -0.92),
        (0.05, -0.92),
    ),
    "sitting": (
        (0.0, -0.80),
        (0.0, -0.70),
        (-0.10, -0.70),
        (-0.14, -0.55),
        (-0.09, -0.42),
        (0.10, -0.70),
        (0.14, -0.55),
        (0.09, -0.42),
        (-0.06, -0.40),
        (-0.12, -0.32),
        (-0.12, -0.06),
        (0.06, -0.40),
        (0.12, -0.32),
        (0.12, -0.06),
        (-0.025, -0.815),
        (0.025, -0.815),
        (-0.05, -0.80),
        (0.05, -0.80),
    ),
    "arms_up": (
        (0.0, -0.92),
        (0.0, -0.82),
        (-0.10, -0.82),
        (-0.18, -0.95),
        (-0.21, -1.10),
        (0.10, -0.82),
        (0.18, -0.95),
        (0.21, -1.10),
        (-0.06, -0.50),
        (-0.08, -0.27),
        (-0.09, -0.04),
        (0.06, -0.50),
        (0.08, -0.27),
        (0.09, -0.04),
        (-0.025, -0.935),
        (0.025, -0.935),
        (-0.05, -0.92),
        (0.05, -0.92),
    ),
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATE_XY)


def template_pose(name: str, center_x: float, feet_y: float, height: float) -> np.ndarray:
    """A template pose placed with its feet midpoint at (center_x, feet_y), `height` pixels tall."""
    if name not in TEMPLATE_XY:
        raise ValueError(f"unknown pose template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    xy = np.round(np.asarray(TEMPLATE_XY[name], dtype=np.float64) * height + (center_x, feet_y), 2)
    return np.concatenate([xy, np.ones((NUM_KEYPOINTS, 1))], axis=1)


def visible(pose: np.ndarray) -> np.ndarray:
    """Boolean mask of the keypoints that are shown (confidence > 0)."""
    return pose[:, 2] > 0


def visible_limbs(pose: np.ndarray) -> list[tuple[int, int]]:
    """The limbs whose two ends are both visible."""
    shown = visible(pose)
    return [(a, b) for a, b in LIMBS if shown[a] and shown[b]]


def shows_on_canvas(pose: np.ndarray, width: float, height: float, margin: float = 0.0) -> bool:
    """Whether a visible joint, or a visible limb, lies on the canvas (grown by `margin` pixels
    on each side, the strokes' reach)."""
    lo, hi = np.array([-margin, -margin]), np.array([width + margin, height + margin])
    shown = visible(pose)
    if any((lo <= pose[j, :2]).all() and (pose[j, :2] <= hi).all() for j in np.flatnonzero(shown)):
        return True
    return any(_segment_meets_box(pose[a, :2], pose[b, :2], lo, hi) for a, b in visible_limbs(pose))


def _segment_meets_box(p0: np.ndarray, p1: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether the segment p0-p1 crosses the box [lo, hi] (Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    d = p1 - p0
    for axis in range(2):
        for p, q in ((-d[axis], p0[axis] - lo[axis]), (d[axis], hi[axis] - p0[axis])):
            if p == 0:
                if q < 0:
                    return False
            elif p < 0:
                t0 = max(t0, q / p)
            else:
                t1 = min(t1, q / p)
    return t0 <= t1


def pose_center(pose: np.ndarray) -> np.ndarray:
    """Centre of the bounding box of the visible keypoints, shape (2,)."""
    xy = pose[visible(pose), :2]
    if len(xy) == 0:
        return np.zeros(2)
    return (xy.min(axis=0) + xy.max(axis=0)) / 2


def translate(pose: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move every keypoint by (dx, dy) pixels."""
    out = pose.copy()
    out[:, :2] += (dx, dy)
    return out


def scale(pose: np.ndarray, factor: float, center: np.ndarray | None = None) -> np.ndarray:
    """Scale about `center` (default: the pose's own centre)."""
    c = pose_center(pose) if center is None else np.asarray(center, dtype=np.float64)
    out = pose.copy()
    out[:, :2] = (pose[:, :2] - c) * factor + c
    return out


def rotate(pose: np.ndarray, degrees: float, center: np.ndarray | None = None) -> np.ndarray:
    """Rotate clockwise on screen (y points down) by `degrees` about `center`."""
    c = pose_center(pose) if center is None else np.asarray(center, dtype=np.float64)
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = pose.copy()
    out[:, :2] = (pose[:, :2] - c) @ rot.T + c
    return out


def mirror(pose: np.ndarray, center_x: float | None = None) -> np.ndarray:
    """Flip horizontally about `center_x` and swap left/right keypoints, as a mirror image would."""
    cx = pose_center(pose)[0] if center_x is None else center_x
    out = pose.copy()
    out[:, 0] = 2 * cx - pose[:, 0]
    for right, left in LEFT_RIGHT_PAIRS:
        out[[right, left]] = out[[left, right]]
    return out
