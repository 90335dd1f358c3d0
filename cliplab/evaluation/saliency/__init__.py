"""Saliency maps for a CLIP image tower, one method per module, all with one signature (Captum style):

    method(encoder: PixelEncoder, pixels: (B, 3, H, W) in [0, 1], text: (B, D)) -> maps (B, H, W)

`text` holds the unit text embedding of each image's target class; the score explained is the cosine
s_b = t_b · f(x_b)/‖f(x_b)‖. Maps are float32 in [0, 1] at the input's resolution. Each call is one
forward and one backward for the whole batch (the per-sample scores are summed; the images do not
interact because the encoder runs in eval mode, restored after), works under the caller's
`torch.autocast` and re-enables gradients under `torch.no_grad` (not under `torch.inference_mode`),
and leaves no hooks, no `requires_grad` change and nothing in the parameters' `.grad` behind.
"""

from collections.abc import Callable

import torch

from cliplab.evaluation.saliency.grad_cam import grad_cam
from cliplab.evaluation.saliency.grad_eclip import grad_eclip
from cliplab.evaluation.saliency.simple_gradient import simple_gradient
from cliplab.pixels import PixelEncoder

SaliencyMethod = Callable[[PixelEncoder, torch.Tensor, torch.Tensor], torch.Tensor]

SALIENCY_METHODS: dict[str, SaliencyMethod] = {
    "simple_gradient": simple_gradient,
    "grad_cam": grad_cam,
    "grad_eclip": grad_eclip,
}
