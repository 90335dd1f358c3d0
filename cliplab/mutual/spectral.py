"""Prominent patches: the spectral foreground of a batch of patch features (mutual-knowledge step 3).

Sammani & Deligiannis (NeurIPS 2024) split the patches of the images of one class into foreground
and background with an eigenvector of a patch affinity. Three variants, all batched, none looping
over images:

- ``joint`` [reference]: every patch row L2-normalised, all B·N patches stacked into F̂ (B·N, C);
  the second left singular vector of F̂ (= second eigenvector of A = F̂F̂ᵀ, no Laplacian) over the
  whole batch, so an image's mask depends on which images share its batch (the reference's batch is
  a class folder).
- ``per_image`` [the paper's text]: the second eigenvector of each image's own f̂f̂ᵀ (N, N).
- ``fiedler`` [TokenCut, Wang et al. CVPR 2022]: the Fiedler vector of the normalised Laplacian of
  a thresholded cosine affinity, per image.
"""

import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError

METHODS = ("joint", "per_image", "fiedler")


def sign_rule(v: torch.Tensor) -> torch.Tensor:
    """Resolve the arbitrary sign of eigenvectors v (..., n) along the last dimension.

    The vector is negated where the fraction of strictly positive entries is in (0.5, 1), so the
    positive side (the foreground) is the minority. A fraction of exactly 0.5 or 1 is left as is,
    as the reference does.
    """
    positive = (v > 0).float().mean(dim=-1, keepdim=True)
    return torch.where((positive > 0.5) & (positive < 1), -v, v)


def prominent_patches(f: torch.Tensor, method: str = "joint", threshold: float = 0.2,
                      eps: float = 1e-5) -> torch.Tensor:
    """Foreground mask of the patches f: (B, N, C) → (B, N) bool.

    joint / per_image: foreground = strictly positive entries of the sign-ruled eigenvector.
    fiedler: the affinity is W_ij = 1 where cos(f_i, f_j) > threshold, else eps (TokenCut's τ = 0.2,
    ε = 1e-5); the Fiedler vector x = D^-1/2 y, y the second smallest eigenvector of
    I − D^-1/2 W D^-1/2; foreground = the side of mean(x) holding argmax |x| (TokenCut's seed).
    The decomposition runs in float32 whatever f's precision.
    """
    if method not in METHODS:
        raise CliplabError(f"unknown prominent-patch method {method!r}; choose one of {METHODS}")
    B, N, C = f.shape
    f_hat = F.normalize(f.float(), dim=-1)
    if method == "joint":
        if min(B * N, C) < 2:
            raise CliplabError(f"a second singular vector needs at least 2 patches and 2 channels, got {B * N}x{C}")
        u = torch.linalg.svd(f_hat.reshape(B * N, C), full_matrices=False).U[:, 1]
        return sign_rule(u).reshape(B, N) > 0
    if N < 2:
        raise CliplabError(f"a second eigenvector needs at least 2 patches per image, got {N}")
    A = f_hat @ f_hat.transpose(1, 2)
    if method == "per_image":
        # eigh sorts eigenvalues ascending: the second largest is second from the end
        v = torch.linalg.eigh(A).eigenvectors[..., -2]
        return sign_rule(v) > 0
    W = torch.where(A > threshold, 1.0, eps)
    d_isqrt = W.sum(dim=-1).rsqrt()
    laplacian = torch.eye(N, device=f.device) - d_isqrt[:, :, None] * W * d_isqrt[:, None, :]
    x = d_isqrt * torch.linalg.eigh(laplacian).eigenvectors[..., 1]
    side = x > x.mean(dim=-1, keepdim=True)
    seed = x.abs().argmax(dim=-1, keepdim=True)
    return side == side.gather(-1, seed)
