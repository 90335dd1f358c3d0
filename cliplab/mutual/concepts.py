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
    """
    x = np.asarray(x, dtype=np.float64)
    k = min(L, x.shape[0])
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    kmeans = KMeans(n_clusters=k, max_iter=max_iter, n_init=1, random_state=seed)
    return kmeans.fit_predict(x).astype(np.int64)
