"""Clean-up of the prominent patches on the patch grid (mutual-knowledge step 4).

The reference keeps, per image, the largest 8-connected component of the foreground and the second
largest too when it has at least 5 patches; everything else is dropped as spectral noise.
"""

import numpy as np
from scipy import ndimage

# 8-connectivity inside one grid, no connection between the grids of neighbouring images, so the
# whole batch is labelled in one call
_WITHIN_IMAGE_8 = np.zeros((3, 3, 3), dtype=bool)
_WITHIN_IMAGE_8[1] = True


def largest_components(mask_grid: np.ndarray, min_second: int = 5) -> np.ndarray:
    """Keep the largest component of each mask, and the second if it has ≥ min_second patches.

    mask_grid: (B, h, w) bool foreground on the patch grid (a torch tensor is accepted too).
    Returns (B, h, w) bool. Ties between equal sizes go to the component met first in raster order,
    as the reference's argmax does. An image without foreground comes back empty ("no prominent
    region"); the caller skips it downstream.
    """
    mask_grid = np.asarray(mask_grid, dtype=bool)
    labels, n = ndimage.label(mask_grid, structure=_WITHIN_IMAGE_8)
    if n == 0:
        return np.zeros_like(mask_grid)
    ids, first = np.unique(labels, return_index=True)
    ids, first = ids[1:], first[1:]  # label 0 is the background
    sizes = np.bincount(labels.ravel())[ids]
    image = first // labels[0].size
    # labels grow in raster order, so sorting by (image, size descending, label) ranks each
    # image's components with the reference's tie-break
    order = np.lexsort((ids, -sizes, image))
    image_sorted = image[order]
    rank = np.arange(n) - np.searchsorted(image_sorted, image_sorted)
    keep = (rank == 0) | ((rank == 1) & (sizes[order] >= min_second))
    lookup = np.zeros(n + 1, dtype=bool)
    lookup[ids[order]] = keep
    return lookup[labels]
