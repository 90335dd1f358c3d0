"""The descriptor bank D of a dataset (Menon & Vondrick's GPT-3 descriptors; mutual knowledge's D).

D is the de-duplicated union of all classes' descriptors in order of first appearance (exact string
match), and each descriptor remembers which classes list it (500 ImageNet descriptors are shared).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from cliplab.errors import CliplabError


@dataclass(frozen=True)
class DescriptorBank:
    descriptors: tuple[str, ...]  # D, first-appearance order
    classes: tuple[tuple[int, ...], ...]  # per descriptor, the indices of the classes listing it
    class_names: tuple[str, ...]


def descriptor_bank(per_class: dict[str, list[str]], underscores_are_spaces: bool = False) -> DescriptorBank:
    """D from `{class name: [descriptor, ...]}` in class-index order (a class may have none)."""
    index: dict[str, int] = {}
    classes: list[list[int]] = []
    names = []
    for c, (name, descs) in enumerate(per_class.items()):
        names.append(name.replace("_", " ") if underscores_are_spaces else name)
        for d in descs:
            if d not in index:
                index[d] = len(classes)
                classes.append([])
            if c not in classes[index[d]]:
                classes[index[d]].append(c)
    return DescriptorBank(tuple(index), tuple(tuple(c) for c in classes), tuple(names))


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def descriptor_bank_for_classes(per_class: object, class_names: Sequence[str]) -> DescriptorBank:
    """D from a user's `{class name: [descriptor, ...]}` (parsed JSON), matched to the dataset's classes by name
    (case, `_` and spacing aside) and put in the dataset's class order: the file's order does not matter. Every
    class needs a list of non-empty strings; CliplabError names what is wrong otherwise."""
    if not isinstance(per_class, dict) or not per_class:
        raise CliplabError("must be a JSON object {class name: [descriptor, ...]} with at least one class; "
                           f"got {type(per_class).__name__} {str(per_class)[:60]}")
    for name, descs in per_class.items():
        if not isinstance(descs, list) or not descs or not all(isinstance(d, str) and d.strip() for d in descs):
            raise CliplabError(f"class {name!r}: descriptors must be a non-empty list of non-empty strings; "
                               f"got {str(descs)[:60]}")
    by_name: dict[str, str] = {}
    for name in per_class:
        if _normalised(name) in by_name:
            raise CliplabError(f"classes {by_name[_normalised(name)]!r} and {name!r} are the same class")
        by_name[_normalised(name)] = name
    wanted = {_normalised(c) for c in class_names}
    unknown = [k for k in per_class if _normalised(k) not in wanted]
    missing = [c for c in class_names if _normalised(c) not in by_name]
    if unknown or missing:
        raise CliplabError(f"classes not in the dataset: {unknown[:8]}{' …' if len(unknown) > 8 else ''}; "
                           f"dataset classes without descriptors: {missing[:8]}{' …' if len(missing) > 8 else ''}")
    return descriptor_bank({c: [d.strip() for d in per_class[by_name[_normalised(c)]]] for c in class_names})
