"""The numbers Zhang et al. (CVPR 2018) publish for LPIPS on BAPPS, with where each one came from.

"The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", R. Zhang, P. Isola,
A. A. Efros, E. Shechtman, O. Wang, CVPR 2018 (arXiv:1801.03924). `scripts/reproduce.py`
prints these next to our own runs in ``paper_table.md``.

Every value is in percent. A configuration or subset that is missing below is a number we
could not find in a source we could read; the table shows it as "—". Never fill one in from
memory or from a plot: add it only with its source.

Where we looked (2026-11, offline copies of public material):

- the original repository, richzhang/PerceptualSimilarity: README.md (the versions we read)
  points at "the Alex - lin row in Table 5 in the paper" but copies no number;
  index.html (the project page) has none; index_files/poster_cvpr.pdf (the CVPR poster) is
  stored only as a binary PDF, so its text could not be read here;
- the paper itself (arXiv 1801.03924, its v2 appendix holds Table 5 with the per-subset 2AFC
  and JND numbers): only the first page of the stored copies (arxiv-vanity, fdocuments,
  scribd) could be reached, not Table 5;
- code, issue and documentation searches for the table's rows (Alex-lin, per-subset 2AFC,
  JND mAP): nothing that quotes the paper's values.
"""

from __future__ import annotations

# Subsets of the BAPPS validation split, in the paper's order.
SUBSETS_2AFC = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
SUBSETS_JND = ("traditional", "cnn")

# 2AFC score averaged over the "traditional" and "CNN-based" distortion validation subsets.
# Source: issue 12 of this project ("Reproduce the paper from nothing"), which quotes them as
# the averages shown on the paper's CVPR 2018 poster (richzhang/PerceptualSimilarity,
# index_files/poster_cvpr.pdf): lin alex 78.7, vgg 79.4, squeeze 79.8; tune 80.6, 81.4, 79.9;
# human 82.6. We could not open the poster's text to check them (see above). The scratch
# averages are not quoted there.
TRAD_CNN_2AFC: dict[str, float] = {
    "lin_alex": 78.7,
    "lin_vgg": 79.4,
    "lin_squeeze": 79.8,
    "tune_alex": 80.6,
    "tune_vgg": 81.4,
    "tune_squeeze": 79.9,
    "human": 82.6,
}
TRAD_CNN_SOURCE = (
    "CVPR 2018 poster averages of the traditional and CNN-based 2AFC subsets, as quoted in issue 12 "
    "(poster: richzhang/PerceptualSimilarity index_files/poster_cvpr.pdf; not re-read here)"
)

# Per-subset 2AFC (%) by configuration ("lin_alex", ...) and subset ("traditional", ...):
# the paper's Table 5 (arXiv v2 appendix). Not found in any source we could read: empty.
PER_SUBSET_2AFC: dict[str, dict[str, float]] = {}

# Per-subset JND mAP (%), same layout: Table 5 as well. Not found: empty.
PER_SUBSET_JND: dict[str, dict[str, float]] = {}


def paper_2afc(config: str, subset: str) -> float | None:
    """The paper's 2AFC (%) of `config` on `subset`, or None where we have no source."""
    return PER_SUBSET_2AFC.get(config, {}).get(subset)


def paper_jnd(config: str, subset: str) -> float | None:
    """The paper's JND mAP (%) of `config` on `subset`, or None where we have no source."""
    return PER_SUBSET_JND.get(config, {}).get(subset)


def paper_trad_cnn(config: str) -> float | None:
    """The paper's mean 2AFC (%) over traditional and CNN-based distortions, or None."""
    return TRAD_CNN_2AFC.get(config)
