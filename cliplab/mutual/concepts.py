"""Visual concepts: the foreground patches of a class split into L parts (mutual-knowledge step 5).

x pools the prominent patches of all B images of one class, so a concept id names the same part in
every image of the class. The paper reports both branches, PCA and k-means. Both are seeded and
deterministic (the reference's k-means is not).

With fewer patches than concepts both branches return fewer concepts; with no patch, an empty array.
"""

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import MinMaxScaler


def pca_concepts(x, L: int = 5, seed: int = 0) -> np.ndarray:
    """Concept id per patch: argmax over the L min-max-scaled principal components of raw x.

    x: (P, C) foreground patch features (numpy or CPU tensor). Returns (P,) int64 ids in [0, L).
    Centred data has rank ≤ P − 1, so at most P − 1 components are taken (a zero-variance component
    would only min-max-scale rounding noise); P ≤ 1 gives concept 0 for every patch.

    x keeps its precision (float32 features stay float32, as the reference's PCA gets them; other
    dtypes become float64). The L ≪ min(P, C) leading components come from ARPACK (Lanczos, converged
    to machine precision, started from a seeded vector), several times faster than scikit-learn's
    default randomized or full SVD at the paper's sizes (thousands of patches × 768) and the same
    components, sign convention included (scikit-learn flips every solver's components alike); "full"
    when every component is asked for (ARPACK needs fewer than min(P, C)).
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    n_components = min(L, x.shape[0] - 1, x.shape[1])
    if n_components < 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    solver = "arpack" if n_components < min(x.shape) else "full"
    scores = PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit_transform(x)
    return MinMaxScaler().fit_transform(scores).argmax(axis=1).astype(np.int64)


def kmeans_concepts(x, L: int = 5, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """Concept id per patch: k-means (Euclidean) with L clusters on the L2-normalised rows of x.

    x: (P, C) foreground patch features. Returns (P,) int64 ids in [0, min(L, P)): with P < L there
    are at most P concepts (one per distinct patch); P = 0 gives an empty array.

    scikit-learn's ``KMeans(n_clusters=L, max_iter=max_iter, n_init=1, random_state=seed)`` — the
    reference's call, seeded — computed by ``_lloyd``: the same k-means++ start, the same Lloyd steps and
    stopping rule, with Elkan's distance bounds so that a patch whose centre cannot change is not
    measured again. x keeps its precision as in ``pca_concepts`` (float32 features stay float32, as the
    reference's k-means gets them).
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    k = min(L, x.shape[0])
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    labels = _lloyd(x, k, seed, max_iter) if x.shape[0] >= 8 * k else None
    if labels is None:  # few patches, or a cluster emptied (scikit-learn relocates it): scikit-learn itself
        labels = KMeans(n_clusters=k, max_iter=max_iter, n_init=1, random_state=seed).fit_predict(x)
    return labels.astype(np.int64)


# Bounds are skipped only with this margin (distance units; rows are unit vectors, distances ≤ 2): its square,
# 1.6e-5, is ~100× the rounding error of a float32 squared distance ||c||² − 2x·c, so a skipped patch's
# computed nearest centre is the one a full pass would compute.
_BOUND_MARGIN = 4e-3


def _lloyd(x: np.ndarray, k: int, seed: int, max_iter: int, tol: float = 1e-4) -> np.ndarray | None:
    """scikit-learn's seeded KMeans (n_init=1, "lloyd") on unit rows x (P, C), with Elkan's bounds.

    As scikit-learn: tolerance = tol × mean per-feature variance of x; x centred; k-means++ start
    (``sklearn.cluster.kmeans_plusplus`` with the same RandomState and squared norms); each step assigns
    every row to the centre with the smallest ||c||² − 2x·c (the first on a tie), then moves each centre
    to its rows' mean; stop when no label changed (strict) or when Σ‖shift‖² ≤ tolerance, and in the latter
    case assign once more to the final centres. Each step is one pass over all P × C values in
    scikit-learn; here a row is measured only when its bounds allow another centre (Elkan's bounds,
    k per row): u (≥ the distance to its centre) grows by that centre's shift, l_j (≤ the distance to
    centre j) shrinks by centre j's shift, and the row keeps its centre when u + margin ≤ max(min_j l_j,
    half the distance from its centre to the nearest other). Centre sums are updated by the rows that moved (float64). Late steps, where few rows are
    near a boundary, cost almost nothing. Returns None if a cluster empties (the caller then runs
    scikit-learn, which relocates it).
    """
    from sklearn.cluster import kmeans_plusplus

    tolerance = float(np.mean(np.var(x, axis=0))) * tol
    X = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", X, X)
    centres, _ = kmeans_plusplus(X, k, x_squared_norms=sq, random_state=np.random.RandomState(seed))
    centres = centres.astype(X.dtype)
    n = len(X)
    rows = np.arange(n)

    def measure(idx):
        """labels, distance to the nearest centre and (k, rows) to every centre (the nearest's inf) for rows
        idx (all when None)."""
        part = X if idx is None else X[idx]
        score = (centres * centres).sum(1)[None, :] - 2 * (part @ centres.T)  # what scikit-learn's argmin sees
        best = score.argmin(1)
        dist = np.sqrt(np.maximum(score + (sq if idx is None else sq[idx])[:, None], 0).astype(np.float64))
        nearest = dist[np.arange(len(best)), best]
        dist[np.arange(len(best)), best] = np.inf
        return best, nearest, dist.T

    labels, upper, lower = measure(None)
    eye = np.eye(k)
    sums = eye[labels].T @ X.astype(np.float64)  # (k, C) per-centre sums, float64
    counts = np.bincount(labels, minlength=k)
    labels_old, strict = None, False
    for _ in range(max_iter):
        if labels_old is not None:
            moved = np.flatnonzero(labels != labels_old)
            sums += (eye[labels[moved]] - eye[labels_old[moved]]).T @ X[moved].astype(np.float64)
            counts = np.bincount(labels, minlength=k)
        if (counts == 0).any():
            return None
        new = (sums / counts[:, None]).astype(X.dtype)
        shift = np.sqrt(((new.astype(np.float64) - centres) ** 2).sum(1))
        centres = new
        if labels_old is not None and np.array_equal(labels, labels_old):
            strict = True
            break
        if (shift**2).sum() <= tolerance:
            break
        labels_old = labels.copy()
        labels = _assign(labels, upper, lower, shift, centres, measure, rows)
    if not strict:
        labels = _assign(labels, upper, lower, shift, centres, measure, rows)
    return labels


def _assign(labels, upper, lower, shift, centres, measure, rows) -> np.ndarray:
    """One assignment step with the distance bounds (updated in place); returns the new labels."""
    upper += shift[labels]
    lower -= shift[:, None]  # (k, P): contiguous per centre, so the min over centres is k − 1 vector ops
    between = np.sqrt(((centres[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(between, np.inf)
    half = between.min(1) / 2
    unsure = rows[upper + _BOUND_MARGIN > np.maximum(lower.min(0), half[labels])]
    labels = labels.copy()
    if len(unsure):
        labels[unsure], upper[unsure], lower[:, unsure] = measure(unsure)
    return labels
