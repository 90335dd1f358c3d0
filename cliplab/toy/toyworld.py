"""toyworld: a deterministic procedural image dataset with ground truth, standing in for ImageNet.

Each image shows one object of one of twelve classes (house, car, tree, ...) drawn from named parts
on a textured background. Classes differ by shape and layout; colours, size, position, counts of
repeated parts, the texture of one part and the background vary within every class and are recorded
in `ToySample.attributes`. Alongside the RGB image comes a per-pixel part map with a global part id
per pixel (0 = background), drawn without anti-aliasing so it matches the painted pixels exactly.

Part ids are shared by name across classes: "windows" of a house, a car and a rocket are all
`PART_NAMES.index("windows")`, and likewise "body", "base", "stem", "fins". Part ids therefore never
reveal the class on their own.

Determinism: sample `i` of split `s` under seed `k` is drawn from its own generator seeded with
`SeedSequence([k, split_id, 0, i])`, so any subset can be rendered alone and generation can be
chunked. Labels are balanced: each aligned block of `len(CLASSES)` consecutive indices holds every
class once, in an order drawn from `SeedSequence([k, split_id, 1, block])`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cliplab.errors import CliplabError

SPLITS = {"train": 0, "val": 1}

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (140, 140, 140),
}

# Colours too close to a background's own are never used on it, so the object always stands out.
BACKGROUNDS: dict[str, frozenset[str]] = {
    "grass": frozenset({"green"}),
    "sky": frozenset({"blue", "white"}),
    "sand": frozenset({"yellow", "brown"}),
    "night": frozenset({"black", "blue", "purple"}),
    "wall": frozenset({"red", "brown", "orange"}),
    "snow": frozenset({"white", "grey"}),
}

# Target sqrt(area) of the object's bounding box as a fraction of the image side.
SIZES = {"small": 0.55, "medium": 0.68, "large": 0.8}
POSITIONS = ("left", "centre", "right", "top", "bottom")
TEXTURES = ("plain", "striped", "dotted")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Counted parts take their count word; their singular is used when the count is one.
_SINGULAR = {"windows": "window", "wheels": "wheel", "petals": "petal", "sails": "sail",
             "spots": "spot", "teeth": "tooth", "fins": "fin"}
# Parts named in the plural even when uncounted ("red walls", not "a red walls").
_PLURAL_NOUNS = frozenset({"walls", "fins"})


@dataclass(frozen=True)
class ClassSpec:
    """One object class: its name, its part names (drawing order) and LLM-style descriptors."""

    name: str
    parts: tuple[str, ...]
    descriptors: tuple[str, ...]


# Geometry is given in a unit frame (x right, y down); each builder returns primitives
# (part, kind, geometry) in painter's order plus the class-specific attributes it drew.
# kind: "rect" / "ellipse" / "dome" (upper half-ellipse) with (x0, y0, x1, y1); "poly" with points;
# "ring" / "frame" (ellipse / rectangle outline) with (x0, y0, x1, y1, line width).


def _house(rng):
    n = int(rng.integers(1, 5))
    apex = rng.uniform(0.0, 0.12)
    slots = [(0.18, 0.55, 0.34, 0.69), (0.66, 0.55, 0.82, 0.69),
             (0.18, 0.78, 0.34, 0.92), (0.66, 0.78, 0.82, 0.92)]
    prims = [("walls", "rect", (0.1, 0.45, 0.9, 1.0)),
             ("roof", "poly", ((0.0, 0.47), (0.5, apex), (1.0, 0.47))),
             ("door", "rect", (0.42, 0.68, 0.58, 1.0))]
    prims += [("windows", "rect", s) for s in slots[:n]]
    return prims, {"count:windows": n}


def _car(rng):
    n_wheels = int(rng.integers(2, 5))
    n_windows = int(rng.integers(1, 3))
    prims = [("cabin", "poly", ((0.16, 0.42), (0.28, 0.1), (0.74, 0.1), (0.86, 0.42))),
             ("body", "rect", (0.0, 0.4, 1.0, 0.78))]
    if n_windows == 1:
        prims.append(("windows", "rect", (0.32, 0.17, 0.7, 0.37)))
    else:
        prims += [("windows", "rect", (0.31, 0.17, 0.48, 0.37)),
                  ("windows", "rect", (0.54, 0.17, 0.71, 0.37))]
    r = 0.13 if n_wheels < 4 else 0.105
    for cx in np.linspace(0.17, 0.83, n_wheels):
        prims.append(("wheels", "ellipse", (cx - r, 0.78 - r, cx + r, 0.78 + r)))
    return prims, {"count:wheels": n_wheels, "count:windows": n_windows}


def _tree(rng):
    shape = str(rng.choice(["round", "pointed"]))
    half = rng.uniform(0.36, 0.46)
    if shape == "round":
        crown = ("crown", "ellipse", (0.5 - half, 0.0, 0.5 + half, 0.68))
    else:
        crown = ("crown", "poly", ((0.5, 0.0), (0.5 + half, 0.76), (0.5 - half, 0.76)))
    return [("trunk", "rect", (0.42, 0.5, 0.58, 1.0)), crown], {"shape:crown": shape}


def _snowman(rng):
    head = rng.uniform(0.2, 0.26)
    return [("base", "ellipse", (0.1, 0.46, 0.9, 1.0)),
            ("head", "ellipse", (0.5 - head, 0.16, 0.5 + head, 0.56)),
            ("hat", "rect", (0.36, 0.0, 0.64, 0.18)),
            ("hat", "rect", (0.24, 0.15, 0.76, 0.21))], {}


def _flower(rng):
    n = int(rng.integers(4, 9))
    cx, cy, dist = 0.5, 0.3, 0.21
    r = 0.14 if n < 7 else 0.115
    phase = rng.uniform(0, 2 * math.pi)
    prims = [("stem", "rect", (0.46, 0.35, 0.54, 1.0)),
             ("leaf", "poly", ((0.52, 0.78), (0.72, 0.6), (0.88, 0.6), (0.66, 0.8)))]
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        px, py = cx + dist * math.cos(a), cy + dist * math.sin(a)
        prims.append(("petals", "ellipse", (px - r, py - r, px + r, py + r)))
    prims.append(("centre", "ellipse", (cx - 0.12, cy - 0.12, cx + 0.12, cy + 0.12)))
    return prims, {"count:petals": n}


def _lamp(rng):
    shape = str(rng.choice(["conical", "domed"]))
    if shape == "conical":
        shade = ("shade", "poly", ((0.3, 0.0), (0.7, 0.0), (0.92, 0.42), (0.08, 0.42)))
    else:
        shade = ("shade", "dome", (0.08, 0.0, 0.92, 0.42))
    return [("base", "rect", (0.22, 0.88, 0.78, 1.0)),
            ("pole", "rect", (0.45, 0.3, 0.55, 0.9)),
            shade], {"shape:shade": shape}


def _boat(rng):
    n = int(rng.integers(1, 3))
    prims = [("hull", "poly", ((0.0, 0.66), (1.0, 0.66), (0.82, 0.96), (0.18, 0.96))),
             ("mast", "rect", (0.46, 0.0, 0.54, 0.68)),
             ("sails", "poly", ((0.56, 0.04), (0.56, 0.62), (0.94, 0.62)))]
    if n == 2:
        prims.append(("sails", "poly", ((0.44, 0.12), (0.44, 0.62), (0.12, 0.62))))
    return prims, {"count:sails": n}


def _rocket(rng):
    n = int(rng.integers(1, 4))
    r = 0.075
    prims = [("fins", "poly", ((0.34, 0.52), (0.1, 0.95), (0.34, 0.82))),
             ("fins", "poly", ((0.66, 0.52), (0.9, 0.95), (0.66, 0.82))),
             ("body", "rect", (0.33, 0.25, 0.67, 0.88)),
             ("nose", "poly", ((0.33, 0.26), (0.5, 0.0), (0.67, 0.26)))]
    for cy in (0.38, 0.56, 0.74)[:n]:
        prims.append(("windows", "ellipse", (0.5 - r, cy - r, 0.5 + r, cy + r)))
    return prims, {"count:windows": n}


def _mushroom(rng):
    n = int(rng.integers(2, 6))
    r = 0.065
    slots = [(0.5, 0.17), (0.27, 0.33), (0.73, 0.33), (0.4, 0.46), (0.6, 0.46)]
    prims = [("stem", "rect", (0.35, 0.5, 0.65, 1.0)), ("cap", "dome", (0.0, 0.0, 1.0, 0.55))]
    prims += [("spots", "ellipse", (x - r, y - r, x + r, y + r)) for x, y in slots[:n]]
    return prims, {"count:spots": n}


def _fish(rng):
    spread = rng.uniform(0.1, 0.2)
    return [("tail", "poly", ((0.0, 0.5 - spread - 0.15), (0.0, 0.5 + spread + 0.15), (0.32, 0.5))),
            ("fins", "poly", ((0.42, 0.3), (0.5, 0.06), (0.7, 0.28))),
            ("fins", "poly", ((0.5, 0.74), (0.56, 0.92), (0.68, 0.74))),
            ("body", "ellipse", (0.2, 0.2, 1.0, 0.8)),
            ("eye", "ellipse", (0.76, 0.35, 0.87, 0.46))], {}


def _key(rng):
    n = int(rng.integers(1, 4))
    shape = str(rng.choice(["round", "square"]))
    kind = "ring" if shape == "round" else "frame"
    prims = [("bow", kind, (0.0, 0.12, 0.42, 0.88, 0.13)),
             ("shaft", "rect", (0.38, 0.42, 1.0, 0.58))]
    for x in (0.86, 0.72, 0.58)[:n]:
        prims.append(("teeth", "rect", (x, 0.58, x + 0.1, 0.78)))
    return prims, {"count:teeth": n, "shape:bow": shape}


def _cup(rng):
    return [("handle", "ring", (0.56, 0.2, 0.96, 0.66, 0.1)),
            ("body", "poly", ((0.1, 0.06), (0.74, 0.06), (0.66, 0.86), (0.18, 0.86))),
            ("saucer", "ellipse", (0.0, 0.8, 0.88, 1.0))], {}


_BUILDERS = {"house": _house, "car": _car, "tree": _tree, "snowman": _snowman, "flower": _flower,
             "lamp": _lamp, "boat": _boat, "rocket": _rocket, "mushroom": _mushroom, "fish": _fish,
             "key": _key, "cup": _cup}

# Parts large enough (several patches at 64 px) to carry a visible stripe or dot pattern.
_TEXTURE_PARTS = {"house": ("walls", "roof"), "car": ("body",), "tree": ("crown",),
                  "snowman": ("base",), "flower": ("petals",), "lamp": ("shade",),
                  "boat": ("hull", "sails"), "rocket": ("body",), "mushroom": ("cap",),
                  "fish": ("body",), "key": ("bow",), "cup": ("body",)}

CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("house", ("walls", "roof", "door", "windows"), (
        "a triangular roof", "rectangular walls", "a small rectangular door", "square windows",
        "a pointed top", "a rectangular shape", "a triangular part")),
    ClassSpec("car", ("cabin", "body", "windows", "wheels"), (
        "round wheels", "a long flat body", "a cabin with windows", "wheels at the bottom",
        "a wide shape", "a rectangular shape", "small circles")),
    ClassSpec("tree", ("trunk", "crown"), (
        "a tall thin trunk", "leaves on top", "a round or pointed crown", "a vertical trunk",
        "a round shape", "a triangular part", "a tall shape")),
    ClassSpec("snowman", ("base", "head", "hat"), (
        "two stacked balls", "a round head", "a hat on top", "a large round base",
        "a round shape", "a rectangular hat", "a tall shape")),
    ClassSpec("flower", ("stem", "leaf", "petals", "centre"), (
        "a thin stem", "petals around a centre", "a round centre", "a leaf on the stem",
        "a round shape", "small circles", "a thin vertical line")),
    ClassSpec("lamp", ("base", "pole", "shade"), (
        "a lampshade on top", "a thin pole", "a flat base", "a cone or dome shaped shade",
        "a thin vertical line", "a tall shape", "a rectangular base")),
    ClassSpec("boat", ("hull", "mast", "sails"), (
        "a hull at the bottom", "triangular sails", "a tall mast", "a sail on a mast",
        "a triangular part", "a thin vertical line", "a wide shape")),
    ClassSpec("rocket", ("fins", "body", "nose", "windows"), (
        "a pointed nose", "fins at the bottom", "round windows", "a tall narrow body",
        "a triangular part", "a tall shape", "small circles")),
    ClassSpec("mushroom", ("stem", "cap", "spots"), (
        "a dome shaped cap", "spots on the cap", "a short thick stem", "a half circle on top",
        "a round shape", "small circles", "a wide shape")),
    ClassSpec("fish", ("tail", "fins", "body", "eye"), (
        "an oval body", "a triangular tail", "a small round eye", "fins on the back",
        "a wide shape", "a triangular part", "a round shape")),
    ClassSpec("key", ("bow", "shaft", "teeth"), (
        "a ring at one end", "a long thin shaft", "teeth along the shaft", "a round or square bow",
        "a wide shape", "a thin horizontal line")),
    ClassSpec("cup", ("handle", "body", "saucer"), (
        "a curved handle", "a saucer underneath", "a tapered body", "a ring shaped handle",
        "a rectangular shape", "a round shape")),
)

PART_NAMES: tuple[str, ...] = ("background",) + tuple(
    dict.fromkeys(p for spec in CLASSES for p in spec.parts))
_PART_ID = {name: i for i, name in enumerate(PART_NAMES)}

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a drawing of a {}.", "a picture of the {}.", "a small {}.",
    "a large {}.", "a photo of the {}.", "an image of a {}.", "a toy {}.",
    "a simple drawing of a {}.",
)


def class_names() -> list[str]:
    """Class names in label order (`class_names()[label]`)."""
    return [spec.name for spec in CLASSES]


def descriptors() -> dict[str, list[str]]:
    """Class name -> short descriptor phrases; some (e.g. "a round shape") recur across classes."""
    return {spec.name: list(spec.descriptors) for spec in CLASSES}


# Which parts each descriptor names (ground truth for the mutual-knowledge D_v check). An empty tuple
# marks a whole-object shape phrase ("a round shape"): true of the classes that list it.
DESCRIPTOR_PARTS: dict[str, tuple[str, ...]] = {
    "a triangular roof": ("roof",), "rectangular walls": ("walls",), "a small rectangular door": ("door",),
    "square windows": ("windows",), "a pointed top": ("roof",),
    "round wheels": ("wheels",), "a long flat body": ("body",), "a cabin with windows": ("cabin", "windows"),
    "wheels at the bottom": ("wheels",),
    "a tall thin trunk": ("trunk",), "leaves on top": ("crown",), "a round or pointed crown": ("crown",),
    "a vertical trunk": ("trunk",),
    "two stacked balls": ("base", "head"), "a round head": ("head",), "a hat on top": ("hat",),
    "a large round base": ("base",), "a rectangular hat": ("hat",),
    "a thin stem": ("stem",), "petals around a centre": ("petals", "centre"), "a round centre": ("centre",),
    "a leaf on the stem": ("leaf", "stem"),
    "a lampshade on top": ("shade",), "a thin pole": ("pole",), "a flat base": ("base",),
    "a cone or dome shaped shade": ("shade",), "a rectangular base": ("base",),
    "a hull at the bottom": ("hull",), "triangular sails": ("sails",), "a tall mast": ("mast",),
    "a sail on a mast": ("sails", "mast"),
    "a pointed nose": ("nose",), "fins at the bottom": ("fins",), "round windows": ("windows",),
    "a tall narrow body": ("body",),
    "a dome shaped cap": ("cap",), "spots on the cap": ("spots", "cap"), "a short thick stem": ("stem",),
    "a half circle on top": ("cap",),
    "an oval body": ("body",), "a triangular tail": ("tail",), "a small round eye": ("eye",),
    "fins on the back": ("fins",),
    "a ring at one end": ("bow",), "a long thin shaft": ("shaft",), "teeth along the shaft": ("teeth", "shaft"),
    "a round or square bow": ("bow",),
    "a curved handle": ("handle",), "a saucer underneath": ("saucer",), "a tapered body": ("body",),
    "a ring shaped handle": ("handle",),
    "a rectangular shape": (), "a triangular part": (), "a wide shape": (), "small circles": (),
    "a round shape": (), "a tall shape": (), "a thin vertical line": (), "a thin horizontal line": (),
}


def descriptor_grounded(descriptor: str, class_name: str, present_parts: set[str]) -> bool:
    """Does `descriptor` name something present in an image of `class_name` whose part map shows
    `present_parts`? A part phrase: all the parts it names are present (whatever class listed it).
    A whole-object shape phrase: the image's class lists it."""
    if descriptor not in DESCRIPTOR_PARTS:
        raise CliplabError(f"not a toyworld descriptor: {descriptor!r}")
    parts = DESCRIPTOR_PARTS[descriptor]
    if parts:
        return set(parts) <= present_parts
    return descriptor in CLASSES[class_names().index(class_name)].descriptors


def part_id(name: str) -> int:
    """Global part id of a part name (0 for "background"); the value stored in part maps."""
    if name not in _PART_ID:
        raise CliplabError(f"unknown toyworld part {name!r}; known: {', '.join(PART_NAMES)}")
    return _PART_ID[name]


@dataclass(frozen=True, eq=False)
class ToySample:
    """One rendered sample.

    image: (H, W, 3) uint8 RGB. part_map: (H, W) uint8 global part ids, 0 = background; the object
    mask is `part_map > 0`. attributes: "colour:<part>", "count:<part>" (int), "shape:<part>",
    "texture:<part>" (the one part that may be patterned; all others are plain), "size",
    "position", "background".
    """

    image: np.ndarray
    label: int
    class_name: str
    caption: str
    part_map: np.ndarray
    attributes: dict


@dataclass
class ToyBatch:
    """Samples start..start+n-1 of one split.

    images: (n, H, W, 3) uint8; labels: (n,) int64; part_maps: (n, H, W) uint8; captions and
    attributes: lists of length n; indices: (n,) int64 sample indices.
    """

    images: np.ndarray
    labels: np.ndarray
    part_maps: np.ndarray
    captions: list[str]
    attributes: list[dict]
    indices: np.ndarray


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise CliplabError(f"unknown toyworld split {split!r}; use one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def _check_args(seed: int, image_size: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CliplabError(f"toyworld seed must be a non-negative integer, got {seed!r}")
    if image_size < 32:
        raise CliplabError(f"toyworld image_size must be at least 32 pixels, got {image_size!r}")


@functools.lru_cache(maxsize=4096)
def _block_order(seed: int, split_id: int, block: int) -> tuple[int, ...]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, 1, block]))
    return tuple(int(c) for c in rng.permutation(len(CLASSES)))


def _label(seed: int, split_id: int, index: int) -> int:
    n = len(CLASSES)
    return _block_order(seed, split_id, index // n)[index % n]


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) pixel coordinate grids, each (size, size) int32."""
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.int32), xx.astype(np.int32)


def _background(rng, kind: str, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 background of the given kind; textures are random but cheap."""
    yy, xx = _grid(size)
    shift = rng.integers(-8, 9)
    img = np.empty((size, size, 3), np.int32)
    if kind == "grass":
        img[:] = (100, 170, 70)
        # Per-column noise stretched vertically reads as blades of grass.
        blades = np.repeat(rng.random((size // 4 + 1, size)), 4, axis=0)[:size]
        img[blades < 0.3] = (70, 135, 50)
        img[blades > 0.85] = (130, 195, 90)
    elif kind == "sky":
        img[:] = (135, 190, 240)
        img += (yy[..., None] * np.array([40, 25, 8]) // size)
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0, size), rng.uniform(0.05, 0.6) * size
            rx, ry = rng.uniform(0.12, 0.2) * size, rng.uniform(0.05, 0.08) * size
            img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = (232, 240, 250)
    elif kind == "sand":
        img[:] = (222, 196, 140)
        img[rng.random((size, size)) < 0.12] = (190, 160, 105)
    elif kind == "night":
        img[:] = (20, 24, 60)
        img[rng.random((size, size)) < 0.015] = (240, 240, 200)
    elif kind == "wall":
        bh = max(4, size // 8)
        bw = 2 * bh
        oy, ox = rng.integers(0, bh), rng.integers(0, bw)
        row = (yy + oy) // bh
        col = (xx + ox + (row % 2) * (bw // 2)) // bw
        # Each brick gets its own shade so the wall is not a flat colour.
        shade = rng.integers(-15, 16, size=(row.max() + 1, col.max() + 1))
        img[:] = (165, 70, 50)
        img += shade[row, col][..., None]
        mortar = ((yy + oy) % bh == 0) | ((xx + ox + (row % 2) * (bw // 2)) % bw == 0)
        img[mortar] = (205, 200, 190)
    elif kind == "snow":
        img[:] = (236, 240, 248)
        img[rng.random((size, size)) < 0.08] = (200, 210, 228)
    img += shift
    return np.clip(img, 0, 255).astype(np.uint8)


def _bbox(prims) -> tuple[float, float, float, float]:
    xs, ys = [], []
    for _, kind, geom in prims:
        if kind == "poly":
            xs += [p[0] for p in geom]
            ys += [p[1] for p in geom]
        else:
            xs += [geom[0], geom[2]]
            ys += [geom[1], geom[3]]
    return min(xs), min(ys), max(xs), max(ys)


def _placement(rng, prims, size_word: str, position: str, size: int):
    """Scale and offset mapping unit-frame geometry to pixels: pixel = offset + unit * scale."""
    x0, y0, x1, y1 = _bbox(prims)
    bw, bh = x1 - x0, y1 - y0
    scale = min(SIZES[size_word] * size / math.sqrt(bw * bh), 0.94 * size / max(bw, bh))
    free_x, free_y = size - bw * scale, size - bh * scale
    margin = 0.03 * size

    def place(free: float, where: str) -> float:
        if where == "low":
            return min(margin, free / 2)
        if where == "high":
            return max(free - margin, free / 2)
        jitter = max(0.0, min(0.04 * size, free / 2 - margin))
        return free / 2 + rng.uniform(-jitter, jitter)

    px = place(free_x, {"left": "low", "right": "high"}.get(position, "mid"))
    py = place(free_y, {"top": "low", "bottom": "high"}.get(position, "mid"))
    return scale, px - x0 * scale, py - y0 * scale


def _draw_parts(prims, scale: float, ox: float, oy: float, size: int) -> np.ndarray:
    """Paint part ids in painter's order with no anti-aliasing; returns (size, size) uint8."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for part, kind, geom in prims:
        pid = _PART_ID[part]
        if kind == "poly":
            draw.polygon([(ox + x * scale, oy + y * scale) for x, y in geom], fill=pid)
            continue
        x0, y0, x1, y1 = geom[:4]
        box = [ox + x0 * scale, oy + y0 * scale, ox + x1 * scale, oy + y1 * scale]
        if kind == "rect":
            draw.rectangle(box, fill=pid)
        elif kind == "ellipse":
            draw.ellipse(box, fill=pid)
        elif kind == "dome":
            box[3] += box[3] - box[1]
            draw.pieslice(box, 180, 360, fill=pid)
        else:
            width = max(2, round(geom[4] * scale))
            shape = draw.ellipse if kind == "ring" else draw.rectangle
            shape(box, outline=pid, width=width)
    return np.asarray(canvas)


def _shade(rgb: tuple[int, int, int]) -> np.ndarray:
    """The second colour of a pattern: darker for light colours, lighter for dark ones."""
    c = np.array(rgb, np.float32)
    if c @ np.array([0.299, 0.587, 0.114]) > 100:
        return (c * 0.55).astype(np.uint8)
    return (c * 0.4 + 150).astype(np.uint8)


def _pattern(texture: str, size: int) -> np.ndarray:
    """(size, size) bool: pixels that take the pattern's second colour."""
    yy, xx = _grid(size)
    if texture == "striped":
        half = max(2, size // 24)
        return ((xx + yy) // half) % 2 == 1
    period = max(4, size // 12)
    dot = max(2, period // 2)
    return (xx % period < dot) & (yy % period < dot)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _part_phrase(part: str, attrs: dict) -> str:
    """E.g. "two yellow windows", "a striped blue roof", "red walls", "a pointed green crown"."""
    words = [attrs.get(f"shape:{part}", ""), attrs.get(f"texture:{part}", "plain"),
             attrs[f"colour:{part}"]]
    adjectives = " ".join(w for w in words if w and w != "plain")
    count = attrs.get(f"count:{part}")
    if count is not None:
        noun = _SINGULAR[part] if count == 1 else part
        return f"{COUNT_WORDS[count]} {adjectives} {noun}"
    if part in _PLURAL_NOUNS:
        return f"{adjectives} {part}"
    return f"{_article(adjectives)} {adjectives} {part}"


_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "centre": "in the middle",
                     "top": "at the top", "bottom": "at the bottom"}
_BACKGROUND_PHRASES = {"grass": "on grass", "sky": "against the sky", "sand": "on sand",
                       "night": "at night", "wall": "in front of a brick wall",
                       "snow": "in the snow"}
_PREFIXES = ("a photo of", "a picture of", "a drawing of", "an image of", "")


# Captions that only name the class ("a photo of a house."), as alt-text often does. Long captions
# mostly teach colours and counts; the short ones carry the class signal zero-shot transfer needs.
SHORT_CAPTION_P = 0.55
# Captions made of the class's descriptors alone ("something with a triangular roof and square
# windows."), without the class name: without them the toy CLIP's text tower never has to tie the
# descriptors that mutual knowledge explains images with to what they show (with the class name in
# the same caption, the name alone solves the contrastive task and the descriptors are ignored).
DESCRIPTOR_CAPTION_P = 0.2


def _caption(rng, spec: ClassSpec, attrs: dict) -> str:
    """A caption that names the class (most also some parts with their attributes) or lists its descriptors."""
    kind = rng.random()
    if kind >= SHORT_CAPTION_P and kind < SHORT_CAPTION_P + DESCRIPTOR_CAPTION_P:
        k = int(rng.integers(1, 3))
        chosen = [spec.descriptors[i] for i in sorted(rng.choice(len(spec.descriptors), size=k, replace=False))]
        return f"something with {' and '.join(chosen)}."
    if kind < SHORT_CAPTION_P:
        # Only templates whose size word (if any) agrees with the drawn size.
        wrong = [w for w in SIZES if w != attrs["size"]]
        fitting = [t for t in TEMPLATES if not any(w in t.split() for w in wrong)]
        return fitting[int(rng.integers(len(fitting)))].format(spec.name)
    k = int(rng.integers(1, min(3, len(spec.parts)) + 1))
    chosen = sorted(rng.choice(len(spec.parts), size=k, replace=False))
    phrases = [_part_phrase(spec.parts[i], attrs) for i in chosen]
    parts = phrases[0] if k == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    noun = spec.name
    if attrs["size"] != "medium" and rng.random() < 0.5:
        noun = f"{attrs['size']} {noun}"
    subject = f"{_article(noun)} {noun}"
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    where = [p for p, keep in ((_POSITION_PHRASES[attrs["position"]], rng.random() < 0.4),
                               (_BACKGROUND_PHRASES[attrs["background"]], rng.random() < 0.6))
             if keep]
    if rng.random() < 0.7:
        text = " ".join(filter(None, [prefix, subject, "with", parts]))
        return text + "".join(f", {w}" for w in where) + "."
    head = " ".join(filter(None, [prefix, subject, ", ".join(where)]))
    return f"{head}. it has {parts}."


# Real categories have typical colours (tree crowns are mostly green): each part takes one of its
# class's typical colours with probability TYPICAL_COLOUR_P, else any colour. Without this cue a small
# ViT needs far more CPU time to learn the classes from silhouettes alone.
TYPICAL_COLOUR_P = 0.9
TYPICAL_COLOURS: dict[str, dict[str, tuple[str, ...]]] = {
    "house": {"walls": ("red", "white", "yellow"), "roof": ("brown", "black"), "door": ("brown",), "windows": ("blue",)},
    "car": {"cabin": ("grey",), "body": ("red", "blue"), "windows": ("white",), "wheels": ("black",)},
    "tree": {"trunk": ("brown",), "crown": ("green",)},
    "snowman": {"base": ("white",), "head": ("grey",), "hat": ("black",)},
    "flower": {"stem": ("green",), "leaf": ("black",), "petals": ("pink", "red"), "centre": ("yellow",)},
    "lamp": {"base": ("grey",), "pole": ("black",), "shade": ("yellow", "orange")},
    "boat": {"hull": ("brown",), "mast": ("black",), "sails": ("white",)},
    "rocket": {"fins": ("red",), "body": ("grey",), "nose": ("orange",), "windows": ("blue",)},
    "mushroom": {"stem": ("white",), "cap": ("red",), "spots": ("yellow",)},
    "fish": {"tail": ("orange",), "fins": ("yellow",), "body": ("orange", "blue"), "eye": ("black",)},
    "key": {"bow": ("yellow",), "shaft": ("grey",), "teeth": ("yellow", "grey")},
    "cup": {"handle": ("pink",), "body": ("white", "blue"), "saucer": ("purple",)},
}


def _part_colours(rng, spec: ClassSpec, background: str) -> list[str]:
    """One colour per part: distinct within the object (parts never merge), none close to the background."""
    free = [c for c in PALETTE if c not in BACKGROUNDS[background]]
    typical = TYPICAL_COLOURS[spec.name]
    colours = []
    for part in spec.parts:
        options = [c for c in typical[part] if c in free]
        pick_typical = rng.random() < TYPICAL_COLOUR_P
        pool = options if pick_typical and options else free
        colour = str(pool[int(rng.integers(len(pool)))])
        free.remove(colour)
        colours.append(colour)
    return colours


def _render(seed: int, split_id: int, index: int, size: int):
    """Draw one sample: (image (size, size, 3) uint8, part_map (size, size) uint8, label, caption,
    attributes)."""
    label = _label(seed, split_id, index)
    spec = CLASSES[label]
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, 0, index]))
    prims, attrs = _BUILDERS[spec.name](rng)
    background = str(rng.choice(list(BACKGROUNDS)))
    colours = _part_colours(rng, spec, background)
    attrs.update({f"colour:{p}": str(c) for p, c in zip(spec.parts, colours)})
    textured = str(rng.choice(_TEXTURE_PARTS[spec.name]))
    attrs[f"texture:{textured}"] = str(rng.choice(TEXTURES, p=[0.4, 0.3, 0.3]))
    attrs["size"] = str(rng.choice(list(SIZES)))
    attrs["position"] = str(rng.choice(POSITIONS))
    attrs["background"] = background

    scale, ox, oy = _placement(rng, prims, attrs["size"], attrs["position"], size)
    part_map = _draw_parts(prims, scale, ox, oy, size)
    lut = np.zeros((256, 3), np.uint8)
    for p in spec.parts:
        lut[_PART_ID[p]] = PALETTE[attrs[f"colour:{p}"]]
    image = _background(rng, background, size)
    obj = part_map > 0
    image[obj] = lut[part_map[obj]]
    texture = attrs[f"texture:{textured}"]
    if texture != "plain":
        where = (part_map == _PART_ID[textured]) & _pattern(texture, size)
        image[where] = _shade(PALETTE[attrs[f"colour:{textured}"]])
    caption = _caption(rng, spec, attrs)
    return image, part_map, label, caption, attrs


def render_sample(seed: int, split: str, index: int, image_size: int = 64) -> ToySample:
    """Sample `index` of `split` under `seed`: image (image_size, image_size, 3) uint8 and part map
    (image_size, image_size) uint8. The same arguments always give the same bytes."""
    split_id = _split_id(split)
    _check_args(seed, image_size)
    if index < 0:
        raise CliplabError(f"toyworld sample index must be non-negative, got {index!r}")
    image, part_map, label, caption, attrs = _render(int(seed), split_id, int(index), image_size)
    return ToySample(image, label, CLASSES[label].name, caption, part_map, attrs)


def generate(seed: int, split: str, n: int, image_size: int = 64, start: int = 0) -> ToyBatch:
    """Samples start..start+n-1 of `split`: images (n, S, S, 3) uint8, labels (n,) int64, part maps
    (n, S, S) uint8, with S = image_size. Chunks concatenate to the same bytes as one call."""
    split_id = _split_id(split)
    _check_args(seed, image_size)
    if n < 0 or start < 0:
        raise CliplabError(
            f"toyworld n and start must be non-negative, got n={n!r}, start={start!r}")
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    part_maps = np.empty((n, image_size, image_size), np.uint8)
    labels = np.empty(n, np.int64)
    captions, attributes = [], []
    for j in range(n):
        image, part_map, label, caption, attrs = _render(int(seed), split_id, start + j, image_size)
        images[j], part_maps[j], labels[j] = image, part_map, label
        captions.append(caption)
        attributes.append(attrs)
    indices = np.arange(start, start + n, dtype=np.int64)
    return ToyBatch(images, labels, part_maps, captions, attributes, indices)


def phrase_bank() -> list[tuple[str, str]]:
    """(phrase, family) pairs for probing attention heads; families: colour, shape, position,
    count, texture, background."""
    colour = [p for c in PALETTE for p in (f"something {c}", f"a {c} part", f"the colour {c}")]
    shape = ["a round part", "a circle", "a triangle", "a triangular part", "a square",
             "a square part", "a rectangle", "a rectangular part", "an oval", "a half circle",
             "a dome shape", "a cone shape", "a ring", "a pointed tip", "a thin line",
             "a long thin pole", "a curved edge", "a tall narrow shape", "a wide flat shape",
             "a trapezoid", "a sharp corner", "a round ball"]
    position = [p for where in ("left", "right") for p in (
        f"an object on the {where}", f"something on the {where} side", f"the {where} half",
        f"placed to the {where}")]
    position += [p for where in ("top", "bottom") for p in (
        f"an object at the {where}", f"something near the {where}", f"the {where} half",
        f"placed at the {where} of the image")]
    position += ["an object in the centre", "something in the middle", "centred in the image",
                 "placed in the middle"]
    counted = ("windows", "wheels", "petals", "spots", "sails", "teeth")
    count = [f"{COUNT_WORDS[k]} {_SINGULAR[p] if k == 1 else p}"
             for p in counted for k in (1, 2, 3, 4) if p != "sails" or k <= 2]
    count += ["a single part", "a pair of parts", "three things", "four things", "five things",
              "six small circles", "seven petals", "eight petals", "many repeated parts"]
    texture = ["a striped pattern", "stripes", "diagonal stripes", "a striped surface",
               "a dotted pattern", "dots", "polka dots", "a dotted surface", "small regular dots",
               "a plain surface", "a solid colour", "a smooth plain part", "a flat colour",
               "a patterned part", "a grid of dots", "thin stripes", "a two-tone pattern",
               "a plain colour without pattern", "stripes of two shades", "a spotted texture"]
    background = ["a grassy background", "green grass", "a lawn", "a meadow",
                  "a blue sky", "clouds in the sky", "the open sky", "a sky background",
                  "sandy ground", "a beach", "desert sand", "a sand background",
                  "a night sky", "stars at night", "a dark background", "the night",
                  "a brick wall", "red bricks", "a wall background", "bricks and mortar",
                  "snow", "a snowy background", "white snow on the ground", "a winter scene"]
    families = {"colour": colour, "shape": shape, "position": position, "count": count,
                "texture": texture, "background": background}
    return [(p, family) for family, phrases in families.items() for p in phrases]
