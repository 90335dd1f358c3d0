"""Descriptor-augmented zero-shot classification (the paper's Table 2 application).

The descriptor classifier scores class c by the mean cosine of the image with the prompts
"how can you identify a {c}. Distinctive and physical features describing it is {d}" over c's
descriptors d. The application adds textual concepts that the model itself used to explain images
of c. The paper's text ("for each class take the two nearest classes in the text space, explain their
images, add the textual concepts") leaves open which concepts go where; cliplab's reading: a
descriptor joins c's list when it appears in the D_v of c's images more often than in those of each
of c's two nearest classes (the ones c is confused with), so only concepts that tell c apart are added.
"""

from collections import Counter

import numpy as np

ZERO_SHOT_PROMPT = "how can you identify a {}. Distinctive and physical features describing it is {}"


def augment_descriptors(explained: list[list[int]], own: list[list[int]], class_weights: np.ndarray,
                        neighbours: int = 2, extra: int = 3) -> list[list[int]]:
    """Per class up to `extra` descriptor indices to add, most distinctive first.

    explained: per class the D_v descriptors of its images (concatenated, repeats count);
    own: per class its bank descriptors; class_weights: (K, d) unit class text embeddings (neighbours
    by cosine). Score of d for c = its frequency among c's picks − its highest frequency among the
    neighbours' picks; only d with a positive score and not already c's are added.
    """
    W = np.asarray(class_weights, dtype=np.float64)
    K = len(explained)
    sim = W @ W.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argsort(-sim, axis=1, kind="stable")[:, :neighbours]
    freq = []
    for picks in explained:
        counts = Counter(picks)
        total = max(len(picks), 1)
        freq.append({d: n / total for d, n in counts.items()})
    out = []
    for c in range(K):
        score = {d: f - max((freq[j].get(d, 0.0) for j in near[c]), default=0.0)
                 for d, f in freq[c].items() if d not in set(own[c])}
        ranked = sorted((d for d, s in score.items() if s > 0), key=lambda d: (-score[d], d))
        out.append(ranked[:extra])
    return out


def descriptor_classifier(images: np.ndarray, prompts: np.ndarray, owner: np.ndarray, n_classes: int) -> np.ndarray:
    """Predicted class per image: argmax_c mean_{prompts p of c} cos(image, p).

    images: (B, d) unit embeddings; prompts: (P, d) unit prompt embeddings; owner: (P,) class of each
    prompt. A class without prompts never wins.
    """
    sim = images @ prompts.T  # (B, P)
    total = np.zeros((len(images), n_classes))
    np.add.at(total.T, owner, sim.T)
    count = np.bincount(owner, minlength=n_classes)
    score = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    return score.argmax(axis=1)
