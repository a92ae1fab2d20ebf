"""Judgments sources turned into one judgments file: BAPPS folders or archives, CSVs; and BAPPS downloads.

`pack.pack` is the entry point (``lpips-lightning pack``); `sources` says what a SOURCE is,
`bapps` holds the data set's facts, `download` fetches its archives (``lpips-lightning download``).
"""

# transitional re-exports: removed when the redesign lands
from ..errors import Interrupted
from ..images import load_image
from .pack import pack
from .plans import GroupPlan
from .sources import plan_source

__all__ = ["GroupPlan", "Interrupted", "load_image", "pack", "plan_source"]
