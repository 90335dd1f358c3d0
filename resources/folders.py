"""Dataset folder layouts on disk: find the images, their labels, class names and prompt templates.

Pure functions over the file system; no Dagster. Four layouts are known:

- ``imagefolder``: ``root/<class name>/<images>`` (searched recursively, as torchvision's ImageFolder
  does). Class index = sorted folder-name order; class name = folder name with ``_`` as space.
- ``imagenet``: ImageNet val as ``root/<wnid>/<images>``. Index = the wnid's position among the 1000
  ImageNet-1k wnids; class names and templates are OpenAI's, from ``open_clip.zero_shot_metadata``.
- ``food101``: the ``food-101`` folder with ``images/``, ``meta/classes.txt`` and ``meta/<split>.txt``.
- ``places365``: ``val_256/`` (or ``val_large/``), ``places365_val.txt``, ``categories_places365.txt``.

Every sample is identified by ``image_id``, its path relative to ``root`` in posix form, and samples
are sorted by it, so the order never depends on the file system's listing order.

Nothing is dropped silently: a file that is not an image PIL opens, a hidden file or folder, a symlinked
folder, and a symlink whose target lies outside ``root`` (unless ``follow_symlinks``) are listed in
``skipped`` with the reason.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cliplab.errors import CliplabError
from resources.images import MAX_PIXELS, decode_image, image_extensions

# The domain-neutral part of OpenAI's 80 ImageNet prompts: nothing about sculptures, tattoos or video
# games, which would be wrong for an arbitrary folder of photos.
IMAGEFOLDER_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
)
# CLIP paper, appendix prompts for Food-101 and (SUN397-style) for Places365.
FOOD101_TEMPLATES = ("a photo of {}, a type of food.",)
PLACES365_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")

IMAGENET_NUM_CLASSES = 1000
SYNSET_MAPPING_NAME = "LOC_synset_mapping.txt"
_WNID = re.compile(r"n\d{8}")
FOOD101_SPLITS = ("test", "train")
PLACES365_IMAGE_DIRS = ("val_256", "val_large")  # first one present wins

# What every layout scanner returns: class names, templates, (image_id, label) samples, and for each
# label the layout declares present, the message to raise if it ends up with no images.
_Scan = tuple[list[str], tuple[str, ...], list[tuple[str, int]], dict[int, str]]


@dataclass
class _Walk:
    """The root being scanned and what its scan refused: (path relative to root, reason) pairs."""

    root: Path
    follow_symlinks: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    extensions: frozenset[str] = field(default_factory=image_extensions)

    def __post_init__(self):
        self.real_root = self.root.resolve()

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path.relative_to(self.root).as_posix(), reason))

    def usable(self, path: Path) -> bool:
        """Whether a listed file may be read: a symlink must stay inside the root unless follow_symlinks."""
        if self.follow_symlinks or not path.is_symlink():
            return True
        target = path.resolve()
        if target.is_relative_to(self.real_root):
            return True
        self.skip(path, f"symlink to {target}, outside the dataset root (registry field follow_symlinks = true reads it)")
        return False


@dataclass(frozen=True)
class FolderDataset:
    """One scanned dataset: parallel ``paths``/``labels``/``image_ids``, labels index ``class_names``."""

    layout: str
    root: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    image_ids: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (path relative to root, why it is not a sample)


def scan_folder(
    root: str | os.PathLike,
    layout: str,
    *,
    split: str | None = None,
    synsets: str | None = None,
    allow_empty_classes: bool = False,
    follow_symlinks: bool = False,
) -> FolderDataset:
    """Scan ``root`` as ``layout``; raise CliplabError naming whatever is missing or malformed.

    ``split`` ("test" or "train", default "test") applies to food101 only, ``synsets`` (a
    LOC_synset_mapping.txt) to imagenet only. A class with no images is an error unless
    ``allow_empty_classes``, in which case it keeps its index and name but has no samples.
    ``follow_symlinks`` reads symlinks (files and folders) whose target lies outside ``root``.
    """
    if layout not in _SCANNERS:
        raise CliplabError(f"unknown folder layout {layout!r}; known layouts: {', '.join(_SCANNERS)}")
    if split is not None and layout != "food101":
        raise CliplabError(f"split={split!r} only applies to the food101 layout, not {layout!r}")
    if synsets is not None and layout != "imagenet":
        raise CliplabError(f"synsets={synsets!r} only applies to the imagenet layout, not {layout!r}")
    root_path = _existing_root(root)
    options = {"food101": {"split": split}, "imagenet": {"synsets": synsets}}.get(layout, {})
    walk = _Walk(root_path, follow_symlinks)
    class_names, templates, samples, empty_means = _SCANNERS[layout](walk, **options)
    _check_classes(root_path, layout, samples, empty_means, allow_empty_classes)
    samples.sort()
    return FolderDataset(
        layout=layout,
        root=str(root_path),
        class_names=tuple(class_names),
        templates=tuple(templates),
        paths=tuple(str(root_path / image_id) for image_id, _ in samples),
        labels=tuple(label for _, label in samples),
        image_ids=tuple(image_id for image_id, _ in samples),
        skipped=tuple(sorted(walk.skipped)),
    )


def check_images(paths, *, workers: int = 2, max_pixels: int = MAX_PIXELS) -> list[tuple[str, str]]:
    """Return ``(path, reason)`` for every path that cannot be fully decoded, in input order.

    Relies on PIL's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``; a caller that flips it makes
    truncated files decode (padded with grey) and pass.
    """
    paths = [os.fspath(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decoders release the GIL
        reasons = list(pool.map(lambda path: _decode_failure(path, max_pixels), paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def _decode_failure(path: str, max_pixels: int) -> str | None:
    try:
        decode_image(path, max_pixels)
    except CliplabError as exc:
        cause = exc.__cause__
        return f"{type(cause).__name__}: {cause}"
    return None


def _existing_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise CliplabError(f"dataset root {path} does not exist")
    if not path.is_dir():
        raise CliplabError(f"dataset root {path} is a file, not a folder")
    return path


def _check_classes(
    root: Path,
    layout: str,
    samples: list[tuple[str, int]],
    empty_means: dict[int, str],
    allow_empty_classes: bool,
) -> None:
    """Refuse a dataset without images, and (unless allowed) a class the layout declares but leaves empty.

    ``empty_means`` maps each declared label to the error text for it being empty; an imagenet subset
    declares only its own wnid folders, as the rest of the 1000 classes are absent on purpose.
    """
    if not samples:
        raise CliplabError(f"no images found under {root} (layout {layout!r})")
    if allow_empty_classes:
        return
    seen = {label for _, label in samples}
    for label, message in empty_means.items():
        if label not in seen:
            raise CliplabError(f"{message}; pass allow_empty_classes=True to keep the class anyway")


def _class_folders(walk: _Walk) -> list[Path]:
    """The root's class folders in name order; hidden entries, loose files and refused symlinks are skipped."""
    folders = []
    for path in walk.root.iterdir():
        if path.name.startswith("."):
            walk.skip(path, "hidden " + ("folder" if path.is_dir() else "file"))
        elif not path.is_dir():
            walk.skip(path, "file outside any class folder")
        elif not path.is_symlink() or walk.follow_symlinks or path.resolve().is_relative_to(walk.real_root):
            folders.append(path)
        else:
            walk.skip(path, f"symlinked folder to {path.resolve()}, outside the dataset root (follow_symlinks = true reads it)")
    if not folders:
        raise CliplabError(f"no class folders found in {walk.root}")
    return sorted(folders, key=lambda p: p.name)


def _folder_images(walk: _Walk, folder: Path) -> list[str]:
    """Image ids (relative to the root) of the images anywhere below ``folder``; everything else is listed in
    ``walk.skipped``. Symlinked folders are followed only with ``follow_symlinks`` (and never twice)."""
    found, seen = [], {folder.resolve()}
    for top, dirs, files in os.walk(folder, followlinks=walk.follow_symlinks):
        top = Path(top)
        for name in list(dirs):
            path = top / name
            if name.startswith("."):
                walk.skip(path, "hidden folder")
            elif path.is_symlink() and not walk.follow_symlinks:
                walk.skip(path, f"symlinked folder (to {path.resolve()}): not followed; follow_symlinks = true reads it")
            elif path.resolve() in seen:
                walk.skip(path, "folder already scanned through another link")
            else:
                seen.add(path.resolve())
                continue
            dirs.remove(name)
        for name in files:
            path = top / name
            if name.startswith("."):
                walk.skip(path, "hidden file")
            elif path.suffix.lower() not in walk.extensions:
                walk.skip(path, f"not an image format PIL opens ({path.suffix or 'no extension'})")
            elif not path.is_file():
                walk.skip(path, "broken symlink or not a regular file")
            elif walk.usable(path):
                found.append(path.relative_to(walk.root).as_posix())
    return found


def _empty_folder(folder: Path) -> str:
    return f"class folder {folder} holds no images"


def _scan_imagefolder(walk: _Walk) -> _Scan:
    folders = _class_folders(walk)
    samples = []
    for label, folder in enumerate(folders):
        samples.extend((image_id, label) for image_id in _folder_images(walk, folder))
    class_names = [folder.name.replace("_", " ") for folder in folders]
    empty_means = {label: _empty_folder(folder) for label, folder in enumerate(folders)}
    return class_names, IMAGEFOLDER_TEMPLATES, samples, empty_means


def _scan_imagenet(walk: _Walk, synsets: str | None) -> _Scan:
    # Imported here because open_clip pulls in torch: seconds that the other layouts should not pay.
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    root = walk.root
    folders = _class_folders(walk)
    for folder in folders:
        if not _WNID.fullmatch(folder.name):
            raise CliplabError(f"folder {folder} is not an ImageNet wnid (n followed by 8 digits)")
    index_of = _wnid_index(root, [f.name for f in folders], synsets)
    samples = []
    for folder in folders:
        samples.extend((image_id, index_of[folder.name]) for image_id in _folder_images(walk, folder))
    # open_clip stores the templates as lambdas; calling one with "{}" gives back its format string.
    templates = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
    empty_means = {index_of[folder.name]: _empty_folder(folder) for folder in folders}
    return list(IMAGENET_CLASSNAMES), templates, samples, empty_means


def _wnid_index(root: Path, wnids: list[str], synsets: str | None) -> dict[str, int]:
    """Map each wnid folder to its ImageNet-1k index, from a synset mapping or from all 1000 folders."""
    mapping = Path(synsets) if synsets is not None else _find_synset_mapping(root)
    if mapping is None:
        if len(wnids) != IMAGENET_NUM_CLASSES:
            raise CliplabError(
                f"{root} has {len(wnids)} wnid folders, not {IMAGENET_NUM_CLASSES}, and no synset mapping "
                f"was given or found at {root.parent / SYNSET_MAPPING_NAME} or {root / SYNSET_MAPPING_NAME}: "
                "class indices cannot be known; pass synsets=<path to LOC_synset_mapping.txt>"
            )
        return {wnid: index for index, wnid in enumerate(wnids)}
    index_of = _read_synset_mapping(mapping)
    for wnid in wnids:
        if wnid not in index_of:
            raise CliplabError(f"folder {root / wnid} is not listed in the synset mapping {mapping}")
    return index_of


def _find_synset_mapping(root: Path) -> Path | None:
    for candidate in (root.parent / SYNSET_MAPPING_NAME, root / SYNSET_MAPPING_NAME):
        if candidate.is_file():
            return candidate
    return None


def _read_synset_mapping(path: Path) -> dict[str, int]:
    """Parse Kaggle's LOC_synset_mapping.txt: one "n01440764 tench, Tinca tinca" line per class, in order."""
    index_of = {}
    for lineno, line in _meta_lines(path):
        wnid = line.split(maxsplit=1)[0]
        if not _WNID.fullmatch(wnid) or wnid in index_of:
            raise CliplabError(f"{path}:{lineno}: expected a new wnid and its names, got {line!r}")
        index_of[wnid] = len(index_of)
    if len(index_of) != IMAGENET_NUM_CLASSES:
        raise CliplabError(f"synset mapping {path} lists {len(index_of)} wnids, not {IMAGENET_NUM_CLASSES}")
    return index_of


def _scan_food101(walk: _Walk, split: str | None) -> _Scan:
    root = walk.root
    split = "test" if split is None else split
    if split not in FOOD101_SPLITS:
        raise CliplabError(f"food101 split {split!r} is not one of {', '.join(FOOD101_SPLITS)}")
    folders = [line for _, line in _meta_lines(root / "meta" / "classes.txt")]
    label_of = {folder: label for label, folder in enumerate(folders)}
    split_file = root / "meta" / f"{split}.txt"
    samples = []
    for lineno, line in _meta_lines(split_file):
        folder = line.split("/", 1)[0]
        if folder not in label_of:
            raise CliplabError(f"{split_file}:{lineno}: class {folder!r} is not in meta/classes.txt")
        image_id = f"images/{line}.jpg"
        if _listed_file(walk, root / image_id, split_file, lineno):
            samples.append((image_id, label_of[folder]))
    class_names = [folder.replace("_", " ") for folder in folders]
    empty_means = {
        label: f"class folder {root / 'images' / folder} has no images listed in {split_file}"
        for label, folder in enumerate(folders)
    }
    return class_names, FOOD101_TEMPLATES, samples, empty_means


def _scan_places365(walk: _Walk) -> _Scan:
    root = walk.root
    image_dir = next((root / d for d in PLACES365_IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        folders = " nor ".join(PLACES365_IMAGE_DIRS)
        raise CliplabError(f"{root} has no places365 image folder: neither {folders}")
    categories_file = root / "categories_places365.txt"
    class_names = _read_places365_categories(categories_file)
    val_file = root / "places365_val.txt"
    samples = []
    for lineno, line in _meta_lines(val_file):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise CliplabError(f"{val_file}:{lineno}: expected '<file name> <label>', got {line!r}")
        name, label = fields[0], int(fields[1])
        if label >= len(class_names):
            raise CliplabError(
                f"{val_file}:{lineno}: label {label} is out of range for {len(class_names)} categories"
            )
        image_id = f"{image_dir.name}/{name}"
        if _listed_file(walk, root / image_id, val_file, lineno):
            samples.append((image_id, label))
    empty_means = {
        label: f"category {label} ({name}) of {categories_file} has no images listed in {val_file}"
        for label, name in enumerate(class_names)
    }
    return class_names, PLACES365_TEMPLATES, samples, empty_means


def _read_places365_categories(path: Path) -> list[str]:
    """Parse "/a/apartment_building/outdoor 5" lines into names by index: "apartment building outdoor"."""
    names = {}
    for lineno, line in _meta_lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or not re.fullmatch(r"/\w/\S+", fields[0]):
            raise CliplabError(f"{path}:{lineno}: expected '/<letter>/<category> <index>', got {line!r}")
        names[int(fields[1])] = fields[0][3:].replace("_", " ").replace("/", " ")
    if sorted(names) != list(range(len(names))):
        raise CliplabError(f"{path}: category indices are not exactly 0..{len(names) - 1}, each once")
    return [names[index] for index in range(len(names))]


def _meta_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines of a metadata file with their 1-based line numbers."""
    if not path.is_file():
        raise CliplabError(f"metadata file {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        return [(n, line.strip()) for n, line in enumerate(handle, 1) if line.strip()]


def _listed_file(walk: _Walk, path: Path, meta_file: Path, lineno: int) -> bool:
    """Whether a file a metadata line lists may be read (a missing one is an error, an outside symlink skipped)."""
    if not path.is_file():
        raise CliplabError(f"{meta_file}:{lineno} points to {path}, which does not exist")
    return walk.usable(path)


_SCANNERS = {
    "imagefolder": _scan_imagefolder,
    "imagenet": _scan_imagenet,
    "food101": _scan_food101,
    "places365": _scan_places365,
}
