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

# isort: split
# transitional re-exports: removed when the redesign lands
from .classic import BACKBONES, SCALE, SHIFT, BackboneSpec, cache_file, imagenet_state_dict
from .custom import import_object, module_class, require_trusted
from .lora import LoRALinear
from .probe import probe

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "SCALE",
    "SHIFT",
    "Backbone",
    "BackboneArg",
    "BackboneSpec",
    "Built",
    "LoRALinear",
    "cache_file",
    "display_name",
    "imagenet_state_dict",
    "import_object",
    "module_class",
    "normalize_spec",
    "probe",
    "register_family",
    "require_trusted",
    "short_name",
]
