"""Control images, raw person masks and the per-step mask schedule (pure functions).

The skeleton renderer reproduces ControlNet's OpenPose annotator pixel for pixel (black canvas,
limbs as filled ellipses at 0.6x colour, joints as discs, the fixed palette), because that is the
image distribution the ControlNet was trained on.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from finecontrol.pose import LIMB_COLORS, LIMBS, shows_on_canvas

ANNOTATOR_STICK_WIDTH = 4
ANNOTATOR_JOINT_RADIUS = 4
DEFAULT_MASK_BLUR = 1.0

# Colours that tell people apart in the UI and in mask previews (person i uses colour i).
PERSON_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 130, 245),
    (60, 180, 75),
    (255, 200, 25),
    (145, 30, 180),
    (70, 220, 220),
    (245, 130, 48),
    (240, 50, 230),
)


def normalized(pose: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel keypoints on a width x height canvas -> coordinates in [0, 1] (confidence kept)."""
    out = np.asarray(pose, dtype=np.float64).copy()
    out[:, 0] /= width
    out[:, 1] /= height
    return out


def draw_skeleton(
    canvas: np.ndarray,
    points: np.ndarray,
    stick_width: int = ANNOTATOR_STICK_WIDTH,
    joint_radius: int = ANNOTATOR_JOINT_RADIUS,
) -> np.ndarray:
    """Draw one normalised (18, 3) pose onto an RGB uint8 canvas in place, annotator style."""
    height, width = canvas.shape[:2]
    shown = points[:, 2] > 0
    for (a, b), color in zip(LIMBS, LIMB_COLORS):
        if not (shown[a] and shown[b]):
            continue
        xs = np.array([points[a, 0], points[b, 0]]) * float(width)
        ys = np.array([points[a, 1], points[b, 1]]) * float(height)
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), stick_width), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for (x, y, _), color, show in zip(points, LIMB_COLORS, shown):
        if show:
            cv2.circle(canvas, (int(x * width), int(y * height)), joint_radius, color, thickness=-1)
    return canvas


def skeleton_image(
    poses: list[np.ndarray],
    canvas_size: tuple[int, int],
    size: tuple[int, int],
    stick_width: int = ANNOTATOR_STICK_WIDTH,
    joint_radius: int = ANNOTATOR_JOINT_RADIUS,
) -> np.ndarray:
    """All `poses` (pixels on a canvas of `canvas_size` = (W, H)) drawn on one (H, W, 3) image of `size`."""
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        draw_skeleton(canvas, normalized(pose, *canvas_size), stick_width, joint_radius)
    return canvas


def people_off_canvas(
    poses: list[np.ndarray], canvas_size: tuple[int, int], stroke: int = ANNOTATOR_STICK_WIDTH
) -> list[int]:
    """Indices of the poses of which nothing shows on the canvas (no limb or joint drawn inside
    it): there is nothing to condition them on. Strokes (`stroke`: the larger of the stick width and
    joint radius) count as reaching twice as far, so that no pose that draws a pixel is listed."""
    reach = 2 * stroke
    return [i for i, pose in enumerate(poses) if not shows_on_canvas(pose, *canvas_size, reach)]


def default_dilation(width: int, height: int) -> int:
    """Square dilation kernel size: the image's shorter side // 8, made odd.

    The original sizes it from its `image_resolution`, the shorter side after resizing, so a
    512x768 portrait gets 65 like a 512 px square, and 768 px squares get 97.
    """
    k = min(width, height) // 8
    return k if k % 2 else k + 1


def raw_masks(
    person_images: list[np.ndarray],
    latent_size: tuple[int, int],
    dilation: int | None = None,
    blur_sigma: float = DEFAULT_MASK_BLUR,
) -> np.ndarray:
    """Soft region of each person at latent size, (N, h, w) float32 in [0, 1].

    Each person's own skeleton image is thresholded (> 0), dilated with a square kernel (`dilation`
    pixels; None: `default_dilation` of the image size), blurred
    with a Gaussian of `blur_sigma` pixels and area-resized to the latent grid (h, w).
    """
    h, w = latent_size
    k = default_dilation(person_images[0].shape[1], person_images[0].shape[0]) if dilation is None else dilation
    kernel = np.ones((k, k), np.uint8) if k > 0 else None
    masks = []
    for image in person_images:
        mask = (image.max(axis=2) > 0).astype(np.uint8)
        if kernel is not None:
            mask = cv2.dilate(mask, kernel)
        mask = mask.astype(np.float32)
        if blur_sigma > 0:
            mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=blur_sigma)
        masks.append(cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA))
    return np.clip(np.stack(masks), 0.0, 1.0)


def harmony_steps(steps: int, harmony: float) -> int:
    """How many of the final steps blend the masks softly (official: steps // 2 at harmony 0.5)."""
    if not 0.0 <= harmony <= 1.0:
        raise ValueError(f"harmony must be a fraction of the steps in 0..1, got {harmony}")
    return int(steps * harmony)


def soft_masks(raw: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(R / T) over people: the late-step masks, (N, h, w) summing to 1."""
    return torch.softmax(raw / temperature, dim=0)


def hard_masks(raw: torch.Tensor, temperature: float) -> torch.Tensor:
    """Early-step masks: one-hot argmax over people wherever some R_i > 0; softmax (1/N each) on
    the background where every R_i = 0.

    Ties go to the person with the smaller total raw-mask area, whatever the order of people (only
    between people of exactly equal area does the first listed win). This is our rule, not the
    original's as it runs: the original adds 1 / (1e12 * area_i) to each mask before its argmax,
    apparently for the same purpose, but in float32 that term is below the precision of values near
    1, so there ties go to the lowest-indexed person and the image depends on the order of people
    (docs/method.md, "Ties").
    """
    # Our tie rule (docs/method.md, "Ties"): argmax returns the first maximum, so listing people by
    # increasing raw-mask area gives ties to the smaller person; stable, so equal areas keep their order.
    order = torch.argsort(raw.sum(dim=(1, 2)), stable=True)
    winner = order[torch.argmax(raw[order], dim=0)]
    one_hot = torch.nn.functional.one_hot(winner, raw.shape[0]).permute(2, 0, 1).to(raw.dtype)
    covered = (raw > 0).any(dim=0)
    return torch.where(covered, one_hot, soft_masks(raw, temperature))


def uses_soft_masks(step: int, steps: int, harmony: int) -> bool:
    """True for the final `harmony` steps (step 0 is the noisiest)."""
    return step >= steps - harmony


def mask_overlay(masks: np.ndarray, skeletons: np.ndarray, colors=PERSON_COLORS, opacity: float = 0.55) -> np.ndarray:
    """Tint each pixel with its people's colours weighted by `masks` (N, H, W), skeletons on top."""
    palette = np.array([colors[i % len(colors)] for i in range(len(masks))], dtype=np.float32)
    tint = np.einsum("nhw,nc->hwc", masks.astype(np.float32), palette)
    out = tint * opacity
    drawn = skeletons.max(axis=2, keepdims=True) > 0
    return np.where(drawn, skeletons, out.clip(0, 255)).astype(np.uint8)


def scene_maps(
    poses: list[np.ndarray],
    canvas_size: tuple[int, int],
    size: tuple[int, int],
    latent_size: tuple[int, int],
    dilation: int | None = None,
    blur_sigma: float = DEFAULT_MASK_BLUR,
    stick_width: int = ANNOTATOR_STICK_WIDTH,
    joint_radius: int = ANNOTATOR_JOINT_RADIUS,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Everything the pipeline conditions on, from pixel poses on a canvas of `canvas_size`:
    the all-people control image and one control image per person at `size` = (W, H), and the
    raw person masks (N, h, w) at `latent_size` = (h, w)."""
    person_images = [skeleton_image([pose], canvas_size, size, stick_width, joint_radius) for pose in poses]
    combined = skeleton_image(poses, canvas_size, size, stick_width, joint_radius)
    return combined, person_images, raw_masks(person_images, latent_size, dilation, blur_sigma)


def upsample_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Latent-size masks (N, h, w) -> image size `size` = (W, H), nearest neighbour (what the model sees)."""
    return np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks])


def mask_previews(
    poses: list[np.ndarray],
    canvas_size: tuple[int, int],
    dilation: int | None = None,
    blur_sigma: float = DEFAULT_MASK_BLUR,
    temperature: float = 0.001,
) -> list[np.ndarray]:
    """Skeletons over each person's region at canvas size, for the early (hard) and the late
    (soft) steps, with masks computed on the canvas's 1/8 latent grid (no model needed)."""
    width, height = canvas_size
    control, _, raw = scene_maps(poses, canvas_size, canvas_size, (height // 8, width // 8), dilation, blur_sigma)
    raw_t = torch.from_numpy(raw)
    return [
        mask_overlay(upsample_masks(masks.numpy(), canvas_size), control)
        for masks in (hard_masks(raw_t, temperature), soft_masks(raw_t, temperature))
    ]


def labelled_grid(images: list[list[Image.Image]], columns: list[str], rows: list[str]) -> Image.Image:
    """Images in a grid with a header per column and a label per row; images narrower than 128 px
    (the toy model's 64 px) are enlarged by a whole factor so that the labels fit."""
    w, h = images[0][0].size
    factor = -(-128 // w)
    if factor > 1:
        w, h = w * factor, h * factor
        images = [[image.resize((w, h), Image.NEAREST) for image in row] for row in images]
    top, left = 24, 64 if any(rows) else 0
    grid = Image.new("RGB", (left + w * len(columns), top + h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(columns):
        draw.text((left + j * w + 4, 6), name, fill="black")
    for i, (label, row) in enumerate(zip(rows, images)):
        draw.text((4, top + i * h + h // 2 - 6), label, fill="black")
        for j, image in enumerate(row):
            grid.paste(image, (left + j * w, top + i * h))
    return grid
