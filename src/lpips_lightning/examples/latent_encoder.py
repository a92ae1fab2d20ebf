"""A custom backbone for LPIPS on latents: an encoder in front of a small convolutional stack.

Any importable `nn.Module` can be a backbone: its ``forward(x)`` takes images (N, 3, H, W) and
returns a list of feature maps (N, C, h, w); LPIPS puts one linear head on each. In a config::

    model:
      backbone:
        class_path: lpips_lightning.examples.latent_encoder.LatentEncoder
        init_args: {latent_channels: 4, widths: [32, 64]}

The images arrive in [-1, 1] (what a latent-diffusion VAE expects). A module that wants other
input declares it for [0, 1] images, e.g. ImageNet's::

    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

Here the encoder is a small stand-in for a VAE encoder (8x downsampling to `latent_channels`).
For a real one, build it in ``__init__``, for example with diffusers (an optional dependency of
your own; the weights come through its Hugging Face cache)::

    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-mse")
    self.encoder = nn.Sequential(vae.encoder, vae.quant_conv)   # 2 x latent_channels moments
    # and take the mean half in forward: moments[:, :latent_channels]

Channels per feature map and the smallest image size are found by one dry run; nothing needs
declaring. ``backbone_weights: PATH`` loads a state dict of the whole module.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(1, c_out), nn.SiLU())


class LatentEncoder(nn.Module):
    """An image encoder to a latent (8x smaller, `latent_channels` deep), then a conv stack over it.

    Returns the latent and each stage of the stack: ``[latent, stage1, stage2, ...]``, the stages
    `widths` channels deep, each halving the resolution after the first.

    Args:
        latent_channels: channels of the latent (4 for Stable Diffusion's VAE).
        widths: channels of each stage of the convolutional stack over the latent.
        encoder_width: channels inside the stand-in encoder.
    """

    def __init__(
        self, latent_channels: int = 4, widths: list[int] | tuple[int, ...] = (32, 64), encoder_width: int = 32
    ):
        super().__init__()
        w = encoder_width
        self.encoder = nn.Sequential(  # three stride-2 stages: 8x downsampling, like a VAE's encoder
            _block(3, w, 1), _block(w, w, 2), _block(w, w, 2), _block(w, w, 2), nn.Conv2d(w, latent_channels, 1)
        )
        stages, c_in = [], latent_channels
        for i, c_out in enumerate(widths):
            stages.append(_block(c_in, c_out, 1 if i == 0 else 2))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.encoder(x)
        features = [z]
        for stage in self.stages:
            z = stage(z)
            features.append(z)
        return features
