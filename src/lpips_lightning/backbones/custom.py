"""Custom backbones: a ``{"class_path", "init_args"}`` spec, or in Python an `nn.Module` instance.

Any module whose ``forward(x)`` returns a list of (N, C, h, w) feature maps, e.g. a VAE encoder
in front of a small convolutional stack (latent LPIPS, `examples.latent_encoder`). It declares
its input normalisation with ``input_mean``/``input_std`` attributes (for [0, 1] images), else it
sees the [-1, 1] images. Channels and the minimum size are found by a dry run (`probe`).

A class path is code: one read from a file is refused unless the user trusts the file
(`require_trusted`), and only an `nn.Module` subclass is ever called (`module_class`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..weights import load_state_dict_file, strict_load
from .registry import Built, one_line, register_family
from .specs import CLASS_PATH, MODULE, display_name, module_spec

OWN_PACKAGE = "lpips_lightning"


def import_object(path: str, what: str = "backbone class_path") -> Any:
    """The object a dotted path names (``package.module.Class``), or one line saying why not."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ConfigError(f"{what} {path!r} is not a dotted name like package.module.Class")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(f"{what} {path!r}: module {module_name} does not import ({one_line(err)})") from None
        except Exception as err:
            raise ConfigError(f"{what} {path!r}: module {module_name} does not import ({one_line(err)})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ConfigError(f"{what} {path!r}: {obj.__name__} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(f"{what} {path!r}: no module {parts[0]!r} (check the name, and that its package is installed)")


def require_trusted(spec: Any, trust_code: bool, source: str) -> None:
    """Refuse a backbone spec read from a file when it names code from outside this package.

    A file is data: building its backbone must not import and run code the user never chose.
    A ``class_path`` outside ``lpips_lightning`` is refused unless the user trusts the file
    (``trust_code=True``, ``--trust-code``); inside the package, only its own module classes pass.
    """
    if trust_code or not isinstance(spec, dict) or "class_path" not in spec:
        return
    path = spec["class_path"]
    if isinstance(path, str) and path.startswith(OWN_PACKAGE + "."):
        try:
            cls = import_object(path)
        except ConfigError:  # no such object in the package: refused below like any other code
            cls = None
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith(OWN_PACKAGE + "."):
            return
    raise ConfigError(
        f"{source}: its backbone is custom code ({path!r}); building it would import and run that code. "
        "If you trust this file, load it with trust_code=True (on the command line: --trust-code)"
    )


def module_class(path: str) -> type[nn.Module]:
    """The `nn.Module` subclass a class_path names, found without calling anything."""
    cls = import_object(path)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"backbone class_path {path!r} names a {type(cls).__name__}, not a torch.nn.Module subclass "
            "(nothing was called)"
        )
    return cls


@register_family(CLASS_PATH)
def build_class_path(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    """The module a ``{"class_path", "init_args"}`` spec names, built with its arguments."""
    path, init_args = spec["class_path"], spec["init_args"]
    factory = module_class(path)
    try:
        module = factory(**init_args)
    except Exception as err:
        raise ConfigError(f"backbone {path}(**{init_args}) failed: {one_line(err)}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone class_path {path!r} made a {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        strict_load(module, load_state_dict_file(weights), str(weights))
    return _built(module, spec)


@register_family(MODULE)
def build_instance(module: nn.Module, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    """A module given as an instance: itself (with `weights` loaded when given)."""
    if weights is not None:
        strict_load(module, load_state_dict_file(weights), str(weights))
    return _built(module, module_spec(module))


def _built(module: nn.Module, spec: dict) -> Built:
    mean, std = getattr(module, "input_mean", None), getattr(module, "input_std", None)
    if (mean is None) != (std is None):
        raise ConfigError(f"backbone {display_name(spec)} declares only one of input_mean and input_std")
    if mean is not None:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"backbone {display_name(spec)}: input_mean and input_std need 3 values (R, G, B)")
    return Built(module, spec, mean=mean, std=std)
