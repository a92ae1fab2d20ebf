"""A plan: one group of the judgments file to write, as a source describes it before anything is decoded.

Every source (a BAPPS folder tree, BAPPS archives, a CSV) is turned into a list of
`GroupPlan` first, so that every problem of layout, pairing and values the source shows
without decoding is found before the output is created; `pack.pack` then writes the plans.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .archives import Archive


@dataclass
class GroupPlan:
    """One group to write: its items, each a tuple of image paths and a judgment (or its .npy path).

    A group read from an archive (`archive` set) lists no paths: its items are the sorted
    `names` (stems), and its members lie where the archive's index says.
    """

    group: str
    source: str
    images: list[tuple[str, ...]] = field(default_factory=list)
    targets: list[float | str] = field(default_factory=list)
    votes: list[int] | None = None
    names: list[str] | None = None
    archive: Archive | None = None
    std: list[float] | None = None  # MOS groups: the scores' standard deviations
    higher_is_better: bool = True  # MOS groups: False for DMOS
    note: str = ""  # what the source left out (NIGHTS: too few votes), said on stderr once the file is written

    @property
    def n(self) -> int:
        """The number of items."""
        return len(self.names or ()) if self.archive else len(self.images)

    def files(self) -> Iterator[str]:
        """Every file this group reads: images and ``.npy`` judgments, or its archive."""
        if self.archive:
            yield str(self.archive.path)
            return
        for images in self.images:
            yield from images
        yield from (t for t in self.targets if isinstance(t, str))
