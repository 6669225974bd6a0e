"""Descriptions of scikit-learn's 8×8 digits written from measured attributes, the stand-in for
GPT4Image's MiniGPT-4 captions: each sentence carries per-image information, not just the class.

Measured on each image (pixel values 0–16; "ink" = pixels >= INK):
- stroke weight: total intensity, cut at the dataset's terciles → thin / medium / thick strokes;
- slant: from the intensity-weighted second moments, -cov(col, row) / var(row) (columns per row,
  going up; > 0 leans right);
- closed loops: connected components of the background (4-connected, on the image padded with one
  background ring so everything outside is one component) that do not reach the border;
- width: the ink's bounding-box width over its height → narrow / medium / wide;
- where the ink sits: the share of intensity in the top half and in the left half.
The class name ("It is the digit seven.") is appended with probability ``p`` (default 0.5): GPT4Image's
captions often name the object, not always; p = 0 keeps only the measured attributes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

INK = 6  # of 16: faint anti-aliasing pixels are not strokes
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LOOPS = ("no closed loop", "one closed loop", "two closed loops")


def closed_loops(ink: np.ndarray) -> int:
    """Background regions enclosed by ink (4-connected background, so a diagonal gap closes nothing)."""
    background = np.pad(~ink, 1, constant_values=True)
    _, count = ndimage.label(background)  # default structure: 4-connectivity
    return count - 1


def slant(image: np.ndarray) -> float:
    rows, cols = np.indices(image.shape)
    mass = image.sum()
    r0, c0 = (rows * image).sum() / mass, (cols * image).sum() / mass
    var_r = ((rows - r0) ** 2 * image).sum() / mass
    cov = ((rows - r0) * (cols - c0) * image).sum() / mass
    return float(-cov / var_r)  # rows grow downward: ink to the right at the top gives cov < 0


def attributes(image: np.ndarray) -> dict:
    image = np.asarray(image, dtype=float).reshape(8, 8)
    ink = image >= INK
    rows, cols = np.nonzero(ink)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    mass = image.sum()
    return {"mass": float(mass), "slant": slant(image), "loops": closed_loops(ink),
            "aspect": float(width / height), "top": float(image[:4].sum() / mass), "left": float(image[:, :4].sum() / mass)}


def sentence(a: dict, mass_cuts: tuple[float, float]) -> str:
    weight = "thin" if a["mass"] < mass_cuts[0] else "thick" if a["mass"] > mass_cuts[1] else "medium"
    lean = ("leans strongly to the right" if a["slant"] > 0.35 else "leans slightly to the right" if a["slant"] > 0.12
            else "leans strongly to the left" if a["slant"] < -0.35 else "leans slightly to the left"
            if a["slant"] < -0.12 else "stands upright")
    shape = "narrow" if a["aspect"] < 0.6 else "wide" if a["aspect"] > 0.7 else "of medium width"
    vertical = ("most of the ink is in the upper half" if a["top"] > 0.55 else "most of the ink is in the lower half"
                if a["top"] < 0.45 else "the ink is spread evenly from top to bottom")
    horizontal = "towards the left" if a["left"] > 0.55 else "towards the right" if a["left"] < 0.45 else "centred"
    loops = LOOPS[min(a["loops"], 2)]
    return (f"A handwritten digit with {weight} strokes that {lean}, with {loops}. It is {shape}, "
            f"{vertical}, and the shape sits {horizontal}.")


def describe(images: np.ndarray, labels: np.ndarray, p: float = 0.5, seed: int = 0) -> list[str]:
    """One description per image, in the images' order; the class name appears with probability p."""
    found = [attributes(image) for image in images]
    cuts = tuple(np.quantile([a["mass"] for a in found], [1 / 3, 2 / 3]))
    named = np.random.default_rng(seed).random(len(images)) < p
    return [sentence(a, cuts) + (f" It is the digit {WORDS[y]}." if name else "")
            for a, y, name in zip(found, labels, named)]
