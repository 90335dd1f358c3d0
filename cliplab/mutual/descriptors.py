"""The descriptor bank D of a dataset (Menon & Vondrick's GPT-3 descriptors; mutual knowledge's D).

D is the de-duplicated union of all classes' descriptors in order of first appearance (exact string
match), and each descriptor remembers which classes list it (500 ImageNet descriptors are shared).
"""

from dataclasses import dataclass


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
