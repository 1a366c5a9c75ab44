"""Control images, raw person masks and the per-step mask schedule (pure functions).

The skeleton renderer reproduces ControlNet's OpenPose annotator pixel for pixel (black canvas,
limbs as filled ellipses at 0.6x colour, joints as discs, the fixed palette; hands as rainbow bones
with blue joints and faces as white dots when they are drawn), because that is the image
distribution the ControlNet was trained on.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from finecontrol.pose import FACE, HAND_EDGES, LIMB_COLORS, LIMBS, PART_KEYPOINTS, Parts, shows_on_canvas

ANNOTATOR_STICK_WIDTH = 4
ANNOTATOR_JOINT_RADIUS = 4
# The annotator's hands and faces (controlnet_aux's draw_handpose and draw_facepose), at any image size.
HAND_BONE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
FACE_DOT_RADIUS = 3
FACE_DOT_COLOR = (255, 255, 255)
# Hand bone k's colour: hue k / 20 at full saturation and value, as OpenCV rounds the annotator's
# float colour (255 * matplotlib's hsv_to_rgb; e.g. 76.50000000000001 -> 77, 229.49999999999997 -> 229).
HAND_BONE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 77, 0),
    (255, 153, 0),
    (255, 229, 0),
    (204, 255, 0),
    (128, 255, 0),
    (51, 255, 0),
    (0, 255, 25),
    (0, 255, 102),
    (0, 255, 179),
    (0, 255, 255),
    (0, 178, 255),
    (0, 102, 255),
    (0, 25, 255),
    (51, 0, 255),
    (128, 0, 255),
    (204, 0, 255),
    (255, 0, 230),
    (255, 0, 153),
    (255, 0, 77),
)
# The annotator draws a hand or face point only where its pixel coordinates (truncated to whole
# pixels) both exceed this: never on the first row or column, where its detector puts missing points.
ANNOTATOR_EPS = 0.01
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


def _annotator_pixels(points: np.ndarray, width: int, height: int) -> list[tuple[int, int] | None]:
    """Each normalised (n, 3) point's pixel as the annotator takes it (truncated), or None where it
    is not drawn: hidden, or not beyond ANNOTATOR_EPS on both axes."""
    pixels = []
    for x, y, c in points:
        px, py = int(x * width), int(y * height)
        pixels.append((px, py) if c > 0 and px > ANNOTATOR_EPS and py > ANNOTATOR_EPS else None)
    return pixels


def draw_hand(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw one normalised (21, 3) hand onto an RGB uint8 canvas in place, annotator style: each
    bone between two drawn points in its hue, then every drawn point as a blue disc."""
    pixels = _annotator_pixels(points, canvas.shape[1], canvas.shape[0])
    for (a, b), color in zip(HAND_EDGES, HAND_BONE_COLORS):
        if pixels[a] is not None and pixels[b] is not None:
            cv2.line(canvas, pixels[a], pixels[b], color, thickness=HAND_BONE_THICKNESS)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, HAND_JOINT_RADIUS, HAND_JOINT_COLOR, thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw one normalised (70, 3) face onto an RGB uint8 canvas in place, annotator style: white dots."""
    for pixel in _annotator_pixels(points, canvas.shape[1], canvas.shape[0]):
        if pixel is not None:
            cv2.circle(canvas, pixel, FACE_DOT_RADIUS, FACE_DOT_COLOR, thickness=-1)
    return canvas


def skeleton_image(
    poses: list[np.ndarray],
    canvas_size: tuple[int, int],
    size: tuple[int, int],
    stick_width: int = ANNOTATOR_STICK_WIDTH,
    joint_radius: int = ANNOTATOR_JOINT_RADIUS,
    parts: list[Parts] | None = None,
) -> np.ndarray:
    """All `poses` (pixels on a canvas of `canvas_size` = (W, H)) drawn on one (H, W, 3) image of
    `size`; with `parts` (one dict a pose, the hands and face to draw), each person's hands, then
    face, right after their body, in the annotator's order."""
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for i, pose in enumerate(poses):
        draw_skeleton(canvas, normalized(pose, *canvas_size), stick_width, joint_radius)
        person_parts = parts[i] if parts else {}
        for name in PART_KEYPOINTS:  # left hand, right hand, face
            if name in person_parts and len(person_parts[name]):
                draw = draw_face if name == FACE else draw_hand
                draw(canvas, normalized(person_parts[name], *canvas_size))
    return canvas


def stroke_ratio(width: int, height: int) -> int:
    """How much thicker xinsir's SDXL OpenPose ControlNet wants the annotator's strokes (stick width
    and joint radius) on an image of width x height, as its model card draws its training poses:
    1 below 500 px on the longer side, 2 below 1000, then one more per 1000 px, at most 7."""
    longer = max(width, height)
    if longer < 500:
        return 1
    return 2 if longer < 1000 else min(7, 2 + longer // 1000)


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
    parts: list[Parts] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Everything the pipeline conditions on, from pixel poses on a canvas of `canvas_size`:
    the all-people control image and one control image per person at `size` = (W, H), and the
    raw person masks (N, h, w) at `latent_size` = (h, w). `parts`: each person's hands and face to
    draw (None: bodies only); a person's mask then covers them too."""
    parts = parts or [{} for _ in poses]
    person_images = [
        skeleton_image([pose], canvas_size, size, stick_width, joint_radius, [own]) for pose, own in zip(poses, parts)
    ]
    combined = skeleton_image(poses, canvas_size, size, stick_width, joint_radius, parts)
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
    parts: list[Parts] | None = None,
) -> list[np.ndarray]:
    """Skeletons over each person's region at canvas size, for the early (hard) and the late
    (soft) steps, with masks computed on the canvas's 1/8 latent grid (no model needed); `parts`:
    each person's hands and face to draw (None: bodies only)."""
    width, height = canvas_size
    latent_size = (height // 8, width // 8)
    control, _, raw = scene_maps(poses, canvas_size, canvas_size, latent_size, dilation, blur_sigma, parts=parts)
    raw_t = torch.from_numpy(raw)
    return [
        mask_overlay(upsample_masks(masks.numpy(), canvas_size), control)
        for masks in (hard_masks(raw_t, temperature), soft_masks(raw_t, temperature))
    ]


def caption_font(texts: list[str], width: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font for captions under images `width` pixels wide: 1/16 of the width
    (readable when a row of 3 is shown a third of its size), 16 px at least, smaller only where
    a caption would not fit its image's width otherwise."""
    size = max(16, width // 16)
    font = ImageFont.load_default(size=size)
    while size > 8 and max(font.getlength(t) for t in texts) > width - 8:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def captioned(images: list[Image.Image | np.ndarray], captions: list[str], gap: int = 8) -> Image.Image:
    """`images` side by side, `gap` white pixels apart, each with its caption in a white band
    under it (under, where no viewer's label or toolbar covers it); images narrower than 256 px
    (the toy model's 64 px) are enlarged by a whole factor first."""
    images = [Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in images]
    w, h = images[0].size
    factor = -(-256 // w)
    if factor > 1:
        w, h = w * factor, h * factor
        images = [image.resize((w, h), Image.NEAREST) for image in images]
    font = caption_font(captions, w)
    band = int(font.size * 1.8)
    out = Image.new("RGB", (len(images) * w + (len(images) - 1) * gap, h + band), "white")
    draw = ImageDraw.Draw(out)
    for j, (image, text) in enumerate(zip(images, captions)):
        x = j * (w + gap)
        out.paste(image, (x, 0))
        draw.text((x + w // 2, h + band // 2), text, fill="black", font=font, anchor="mm")
    return out


def labelled_grid(images: list[list[Image.Image]], columns: list[str], rows: list[str]) -> Image.Image:
    """Rows of images, each captioned with its column's name and its row's label ("method, seed 3"),
    the captions under the images (see `captioned`)."""
    lines = []
    for label, row in zip(rows, images):
        lines.append(captioned(row, [f"{column}, {label}" if label else column for column in columns]))
    grid = Image.new("RGB", (lines[0].width, sum(line.height for line in lines)), "white")
    for i, line in enumerate(lines):
        grid.paste(line, (0, i * line.height))
    return grid
