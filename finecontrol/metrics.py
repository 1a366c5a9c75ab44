"""Per-person scores of a generated image: does each person look like their own prompt, and stand in their pose?

`ClipIdentity` is FineControlNet's "CLIP Identity Observance" (arXiv 2312.09252, its evaluation): each
person's crop of the image is compared with CLIP to every person's prompt. The choices below follow
the authors' released evaluation code (github.com/SamsungLabs/FineControlNet, metrics/text_metrics.py,
`compute_local_clip_score_openai`, and metrics/utils.py) where it makes one, and say where this
module differs:

- The crop is the box of the person's visible keypoints (theirs: the tight box), grown by `margin`
  (default 0.1 of the box's size on each side, and at least MIN_PAD of its larger side, so that the
  top of the head above the eyes and the feet below the ankles are in it), clipped to the image.
- The crop is padded to a square with CLIP's mean colour before CLIP's preprocessing (theirs:
  CLIP's own resize and centre crop, which cut the head and feet off a standing person's tall box).
- CLIP ViT-B/32 by default (`openai/clip-vit-base-patch32`, the model of their `clip.load('ViT-B/32')`), the
  prompts as typed, without the scene's setting (theirs: the instance descriptions alone).
- Every person gets, with s_j the cosine similarity of their crop to person j's prompt:
  `clip_similarity` s_own; `clip_own_wins` s_own > every other s_j (strictly: a tie, as between two
  identical prompts, is not a win); `clip_margin` s_own - max of the others;
  `clip_mean_margin` s_own - mean of the others (their "differences", there in logits, 100 x cosine);
  `clip_own_probability` the softmax over all people's prompts of the logits (the model's
  logit_scale x s_j) at the own prompt (their "normalized").
- With one person there is no other prompt: `clip_own_wins`, `clip_margin`, `clip_mean_margin` and
  `clip_own_probability` are None (their code would give a softmax of 1 and a NaN difference).
- A person with no box (no visible keypoint, all on one point, or all off the image) gets None for
  every score; their prompt still counts as another person's for the others.

`PoseFidelity` runs the OpenPose body detector on the image and matches its people to the scene's
skeletons (Hungarian assignment, scipy), then scores each person PCK-style: the share of their
visible keypoints on the image that the matched detection places within `threshold` x the diagonal
of the box of their visible keypoints. (The authors score pose as COCO AP of HigherHRNet's
detections, github_docs/evaluation.md; this is a lighter, per-person stand-in with the detector the
app already uses.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from finecontrol import models
from finecontrol.models import DEFAULT_ANNOTATORS, ModelNotAvailableError, load_pose_detector
from finecontrol.pose import visible
from finecontrol.scene import Scene

Box = tuple[int, int, int, int]  # left, top, right, bottom in image pixels; right and bottom exclusive (PIL's crop)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
# The least a box grows on each side, as a fraction of its larger side: the top of the head lies
# about 0.07 of a standing person's height above the eyes, the soles a little below the ankles.
MIN_PAD = 0.07
CLIP_MEAN_RGB = (123, 117, 104)  # CLIP's normalisation mean x 255: padding that normalises to zero


def image_keypoints(keypoints: np.ndarray, scene: Scene, image_size: tuple[int, int]) -> np.ndarray:
    """A person's (18, 3) keypoints moved from the scene's canvas pixels to an image of `image_size` (width, height)."""
    out = np.array(keypoints, dtype=np.float64)
    out[:, 0] *= image_size[0] / scene.width
    out[:, 1] *= image_size[1] / scene.height
    return out


def person_boxes(scene: Scene, image_size: tuple[int, int], margin: float = 0.1) -> list[Box | None]:
    """Each person's box in an image of `image_size` (width, height): the box of their visible
    keypoints, grown on each side by `margin` x its size along that axis and at least MIN_PAD x its
    larger side, then clipped to the image. None for a person with no visible keypoint, with all of
    them on one point, or whose box lies off the image."""
    width, height = image_size
    boxes: list[Box | None] = []
    for person in scene.people:
        points = image_keypoints(person.keypoints, scene, image_size)
        xy = points[visible(points), :2]
        if len(xy) == 0 or (xy == xy[0]).all():  # nothing shown, or one point: no size to box
            boxes.append(None)
            continue
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        least = MIN_PAD * max(x1 - x0, y1 - y0)
        pad_x, pad_y = max(margin * (x1 - x0), least), max(margin * (y1 - y0), least)
        left, top = max(0, math.floor(x0 - pad_x)), max(0, math.floor(y0 - pad_y))
        right, bottom = min(width, math.ceil(x1 + pad_x)), min(height, math.ceil(y1 + pad_y))
        boxes.append((left, top, right, bottom) if right > left and bottom > top else None)
    return boxes


def square_crop(image: Image.Image, box: Box) -> Image.Image:
    """The box's part of the image, centred on a square of CLIP's mean colour."""
    crop = image.convert("RGB").crop(box)
    side = max(crop.size)
    square = Image.new("RGB", (side, side), CLIP_MEAN_RGB)
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


class ClipIdentity:
    """CLIP Identity Observance per person (see the module's docstring for the definition)."""

    name = "clip"

    def __init__(
        self, model: str = DEFAULT_CLIP, device: str = "cpu", margin: float = 0.1, local_only: bool = False
    ) -> None:
        """Load CLIP from a local folder, the hub cache, or the hub when it is reachable (offline
        without it: ModelNotAvailableError within seconds, with the command to fetch it).
        `local_only`: never download (a folder or the cache, else ModelNotAvailableError)."""
        clip, processor = _load_clip(model, local_only)
        self._setup(clip, processor, device, margin, source=model)

    @classmethod
    def from_components(cls, model: Any, processor: Any, device: str = "cpu", margin: float = 0.1) -> ClipIdentity:
        """A scorer on a given `transformers.CLIPModel` and `CLIPProcessor` (e.g. a tiny random one for tests)."""
        scorer = cls.__new__(cls)
        scorer._setup(model, processor, device, margin)
        return scorer

    def _setup(self, model: Any, processor: Any, device: str, margin: float, source: str = "") -> None:
        self.source = source  # the hub id or folder it was loaded from, when loaded by name
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.margin = margin
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> unit-length text embedding (on CPU)

    def score(self, image: Image.Image, scene: Scene) -> list[dict[str, Any]]:
        """One dict per person of the scene, in its order: clip_similarity, clip_own_wins,
        clip_margin, clip_mean_margin and clip_own_probability."""
        boxes = person_boxes(scene, image.size, self.margin)
        prompts = [person.prompt for person in scene.people]
        unique = list(dict.fromkeys(prompts))  # identical prompts get identical similarities: a tie
        column = [unique.index(prompt) for prompt in prompts]
        shown = [i for i, box in enumerate(boxes) if box is not None]
        similarities = {}
        if shown:
            crops = self.image_embeddings([square_crop(image, boxes[i]) for i in shown])
            table = crops @ self.text_embeddings(unique).T  # (shown people, unique prompts)
            similarities = {i: [table[k, c].item() for c in column] for k, i in enumerate(shown)}
        logit_scale = self.model.logit_scale.detach().exp().item()
        return [_identity_row(similarities.get(i), i, logit_scale) for i in range(len(scene.people))]

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), D) unit-length CLIP text embeddings; prompts not seen before go through
        the text encoder together, once."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if new:
            tokens = self.processor(text=new, padding=True, truncation=True, return_tensors="pt").to(self.device)
            features = _features(self.model.get_text_features(**tokens))
            for prompt, row in zip(new, _unit(features).cpu()):
                self._text_cache[prompt] = row
        return torch.stack([self._text_cache[p] for p in prompts]) if prompts else torch.zeros(0, 0)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(len(images), D) unit-length CLIP image embeddings, all images in one forward pass."""
        if not images:
            return torch.zeros(0, 0)
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return _unit(_features(self.model.get_image_features(pixel_values=pixels))).cpu()


def _identity_row(similarities: list[float] | None, own: int, logit_scale: float) -> dict[str, Any]:
    """A person's scores from their crop's similarities to every person's prompt (None: no crop)."""
    if similarities is None:
        return dict.fromkeys(
            ("clip_similarity", "clip_own_wins", "clip_margin", "clip_mean_margin", "clip_own_probability")
        )
    own_similarity = similarities[own]
    others = similarities[:own] + similarities[own + 1 :]
    row: dict[str, Any] = {"clip_similarity": own_similarity}
    if not others:
        row.update(clip_own_wins=None, clip_margin=None, clip_mean_margin=None, clip_own_probability=None)
        return row
    probabilities = torch.softmax(logit_scale * torch.tensor(similarities, dtype=torch.float64), dim=0)
    row.update(
        clip_own_wins=own_similarity > max(others),
        clip_margin=own_similarity - max(others),
        clip_mean_margin=own_similarity - sum(others) / len(others),
        clip_own_probability=float(probabilities[own]),
    )
    return row


def _features(output: Any) -> torch.Tensor:
    """The projected embeddings get_text/image_features give: a tensor (transformers 4), or pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _load_clip(source: str, local_only: bool = False) -> tuple[Any, Any]:
    """CLIPModel and CLIPProcessor from a local folder, the local hub cache, or (unless
    `local_only`) the hub when reachable."""
    from transformers import CLIPModel, CLIPProcessor

    def load(**kwargs):
        return CLIPModel.from_pretrained(source, **kwargs), CLIPProcessor.from_pretrained(source, **kwargs)

    if Path(source).is_dir():
        return load()
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelNotAvailableError(f"CLIP folder {source} does not exist")
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        pass
    if local_only or models._hub_unavailable():
        folder = f"models/{source.split('/')[-1]}"
        reason = "" if local_only else " and the Hugging Face hub cannot be reached"
        raise ModelNotAvailableError(
            f"the CLIP model {source} is not in the local cache{reason}. "
            f"On a machine with internet run `hf download {source} --local-dir {folder}`, copy the folder "
            f"here and pass it with --clip {folder}."
        )
    return load()


Detect = Callable[[np.ndarray], list]  # RGB array -> controlnet_aux PoseResults (normalised x, y)


class PoseFidelity:
    """Whether the OpenPose detector finds each person of the scene in the image, and how close to their pose."""

    name = "pose"

    def __init__(
        self,
        detect: Detect | None = None,
        annotators: str = DEFAULT_ANNOTATORS,
        threshold: float = 0.1,
        max_match_distance: float = 0.5,
        device: str | None = None,
    ) -> None:
        """`detect`, or else the body detector load_pose_detector(annotators) loads, on `device`
        (offline without its weights: ModelNotAvailableError). A keypoint counts as right within
        `threshold` x the person's box diagonal; a detection is a person's only if their shared
        keypoints lie on average within `max_match_distance` x that diagonal."""
        self.source = "" if detect is not None else annotators
        self.detect = detect if detect is not None else load_pose_detector(annotators, False, device)
        self.threshold = threshold
        self.max_match_distance = max_match_distance

    def score(self, image: Image.Image, scene: Scene) -> list[dict[str, Any]]:
        """One dict per person of the scene, in its order: pose_found (matched to a detected
        person) and pose_pck (0.0 when not found; None when none of their keypoints is on the image)."""
        image = image.convert("RGB")
        detections = [_detected_keypoints(result, image.size) for result in self.detect(np.asarray(image))]
        people = [image_keypoints(person.keypoints, scene, image.size) for person in scene.people]
        matches = self.match(people, detections, image.size)
        rows = []
        for i, points in enumerate(people):
            scored = _on_image(points, image.size)
            if not scored.any():
                rows.append({"pose_found": None, "pose_pck": None})
            elif i not in matches:
                rows.append({"pose_found": False, "pose_pck": 0.0})
            else:
                found = detections[matches[i]]
                close = _distances(points, found) <= self.threshold * _diagonal(points)
                rows.append({"pose_found": True, "pose_pck": float(np.mean(close[scored]))})
        return rows

    def match(
        self, people: list[np.ndarray], detections: list[np.ndarray], image_size: tuple[int, int]
    ) -> dict[int, int]:
        """Person index -> detection index, for the assignment of least total cost, where a pair's
        cost is the mean distance of their shared keypoints over the person's box diagonal."""
        from scipy.optimize import linear_sum_assignment

        if not people or not detections:
            return {}
        forbidden = 1e6
        cost = np.full((len(people), len(detections)), forbidden)
        for i, points in enumerate(people):
            scored = _on_image(points, image_size)
            for j, found in enumerate(detections):
                shared = scored & visible(found)
                if shared.any():
                    mean = float(np.mean(_distances(points, found)[shared])) / _diagonal(points)
                    if mean <= self.max_match_distance:
                        cost[i, j] = mean
        rows, cols = linear_sum_assignment(cost)
        return {int(i): int(j) for i, j in zip(rows, cols) if cost[i, j] < forbidden}


def _detected_keypoints(result: Any, image_size: tuple[int, int]) -> np.ndarray:
    """A PoseResult's body as an (18, 3) array in image pixels, confidence 1 where found and 0 where not."""
    out = np.zeros((len(result.body.keypoints), 3))
    for k, point in enumerate(result.body.keypoints):
        if point is not None:
            out[k] = (point.x * image_size[0], point.y * image_size[1], 1.0)
    return out


def _on_image(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Mask of the visible keypoints that lie on the image (only those can be detected)."""
    x, y = points[:, 0], points[:, 1]
    return visible(points) & (x >= 0) & (x <= image_size[0]) & (y >= 0) & (y <= image_size[1])


def _distances(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per keypoint pixel distance between two poses, infinite where either misses it."""
    d = np.linalg.norm(points[:, :2] - found[:, :2], axis=1)
    return np.where(visible(points) & visible(found), d, np.inf)


def _diagonal(points: np.ndarray) -> float:
    """The diagonal of the box of the visible keypoints, at least one pixel."""
    xy = points[visible(points), :2]
    return max(float(np.linalg.norm(xy.max(axis=0) - xy.min(axis=0))), 1.0) if len(xy) else 1.0
