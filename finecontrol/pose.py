"""OpenPose BODY-18 keypoints, hands and faces: constants, pose templates and pure geometric transforms.

A pose is a float array of shape (18, 3): x and y in pixels, and a confidence where 0 means the
keypoint is hidden. A person's hands and face, when they have them, are `Parts`: OpenPose JSON
field name -> (n, 3) array in the same pixels (21 points a hand, 70 for the face). Every function
here returns new arrays and leaves its input untouched.
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

# A person's hand and face keypoints, by their OpenPose JSON field, in the order the annotator draws
# them (left hand, right hand, face), with their keypoint counts.
HAND_KEYPOINTS = 21
FACE_KEYPOINTS = 70
LEFT_HAND, RIGHT_HAND, FACE = "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"
PART_KEYPOINTS: dict[str, int] = {LEFT_HAND: HAND_KEYPOINTS, RIGHT_HAND: HAND_KEYPOINTS, FACE: FACE_KEYPOINTS}
Parts = dict[str, np.ndarray]

# What the control image draws of each person ("pose_parts" setting) -> the part fields drawn besides the body.
PART_CHOICES: dict[str, tuple[str, ...]] = {
    "body": (),
    "body+hands": (LEFT_HAND, RIGHT_HAND),
    "body+hands+face": (LEFT_HAND, RIGHT_HAND, FACE),
}

# The 20 bones of the OpenPose hand (0 the wrist; 1-4 thumb, 5-8 index, ... 17-20 little finger),
# in the order the annotator draws them (bone k takes the k-th of 20 hues).
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if joint == 0 else 4 * finger + joint, 4 * finger + joint + 1) for finger in range(5) for joint in range(4)
)

# Face points (the 68-point layout plus two pupils) swapped when a face is mirrored: jaw line,
# eyebrows, nostrils, eyes, outer and inner lips, pupils; the other 10 lie on the face's middle line.
FACE_LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),
    *((17 + i, 26 - i) for i in range(5)),
    (31, 35),
    (32, 34),
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),
    (48, 54),
    (49, 53),
    (50, 52),
    (55, 59),
    (56, 58),
    (60, 64),
    (61, 63),
    (65, 67),
    (68, 69),
)

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


def drawn_parts(parts: Parts, choice: str) -> Parts:
    """The parts the control image draws under the "pose_parts" setting `choice` (a PART_CHOICES key)."""
    if choice not in PART_CHOICES:
        raise ValueError(f"pose_parts must be one of {', '.join(PART_CHOICES)}, got {choice!r}")
    return {name: parts[name] for name in PART_CHOICES[choice] if name in parts}


def translate_parts(parts: Parts, dx: float, dy: float) -> Parts:
    """Move every hand and face keypoint by (dx, dy) pixels, as `translate` moves the body."""
    return {name: translate(points, dx, dy) for name, points in parts.items()}


def scale_parts(parts: Parts, factor: float, center: np.ndarray) -> Parts:
    """Scale the hands and face about `center`: the body's (`pose_center(pose)`), so they go with it."""
    return {name: scale(points, factor, center) for name, points in parts.items()}


def rotate_parts(parts: Parts, degrees: float, center: np.ndarray) -> Parts:
    """Rotate the hands and face about `center` (the body's), as `rotate` turns the body."""
    return {name: rotate(points, degrees, center) for name, points in parts.items()}


def mirror_parts(parts: Parts, center_x: float) -> Parts:
    """Flip the hands and face about `center_x` (the body's, as in `mirror`): the left hand becomes
    the right one and the face's left and right points swap, as in a mirror image."""
    out = {}
    for name, points in parts.items():
        flipped = points.copy()
        flipped[:, 0] = 2 * center_x - points[:, 0]
        if name == FACE and len(flipped) == FACE_KEYPOINTS:
            for right, left in FACE_LEFT_RIGHT_PAIRS:
                flipped[[right, left]] = flipped[[left, right]]
        out[{LEFT_HAND: RIGHT_HAND, RIGHT_HAND: LEFT_HAND}.get(name, name)] = flipped
    return out
