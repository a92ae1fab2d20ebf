"""Backbones: a registry of families, each turning a spec into a network cut at its taps.

A spec (`specs`) names a classic backbone (``alex``, ``vgg``, ``squeeze``, `classic`), a model of a
registered family (``torchvision:<model>``, ``timm:<model>``), custom code (``{"class_path": ...,
"init_args": {...}}``) or, in Python, an `nn.Module` instance (`custom`). `Backbone` builds any of
them with one registry lookup; channels per tap and the minimum input size come from the family
or a dry run (`probe`); `lora` adapts attention projections.

A new family plugs in with `register_family`: a function from (spec, pretrained, weights file)
to a `Built`; nothing else changes.
"""

# each family registers itself on import; messages list the prefixed families in this order
# isort: off
from . import classic, torchvision_family, timm_family, custom  # noqa: F401

# isort: on
from .backbone import Backbone
from .registry import FAMILIES, Built, register_family
from .specs import BackboneArg, display_name, normalize_spec, short_name

__all__ = [
    "FAMILIES",
    "Backbone",
    "BackboneArg",
    "Built",
    "display_name",
    "normalize_spec",
    "register_family",
    "short_name",
]
