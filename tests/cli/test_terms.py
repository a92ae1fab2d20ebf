"""Errors in the command line's terms (`cli.terms`): arguments re-spelled as options, plain words left alone."""

from __future__ import annotations

import pytest

from lpips_lightning.cli.distance import distance_command
from lpips_lightning.cli.terms import in_terms, tool_options, training_options
from lpips_lightning.cli.tools import evaluate_command
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.train.module import LPIPSModule

FIT = training_options(LPIPSModule, JudgmentsDataModule)


@pytest.mark.parametrize(
    ("message", "on_fit"),
    [
        ("lr must be a positive number, got -1.0", "--model.lr must be a positive number, got -1.0"),
        ("batch_size must be at least 1, got 0", "--data.batch_size must be at least 1, got 0"),
        (
            "lora_rank: backbone b has no attention; drop lora_rank",
            "--model.lora_rank: backbone b has no attention; drop --model.lora_rank",
        ),
        (
            "data.index_only true with model.feature_cache false",
            "--data.index_only true with --model.feature_cache false",
        ),
        # plain English, paths, quoted values and options already spelled stay as they are
        (
            "pretrained weights for backbone alex: a frozen backbone: x",
            "pretrained weights for backbone alex: a frozen backbone: x",
        ),
        (
            "/tmp/lora_rank.h5: no groups in my_file.h5 'feature_cache'",
            "/tmp/lora_rank.h5: no groups in my_file.h5 'feature_cache'",
        ),
        ("see --model.backbone_weights", "see --model.backbone_weights"),
        ("train: no such judgments file", "train: no such judgments file"),  # a file named like an option
        ("head: mlp with variant 'tune'", "head: mlp with variant 'tune'"),  # a YAML config's words
        (
            "trains a random backbone: drop backbone_weights and set pretrained=False",
            "trains a random backbone: drop --model.backbone_weights and set --model.pretrained false",
        ),
    ],
)
def test_fit_names_its_options(message, on_fit):
    assert in_terms(message, FIT) == on_fit


def test_advice_a_command_cannot_follow_is_dropped():
    message = "x is missing; put the file there, or pass backbone_weights=PATH, or pretrained=False"
    assert (
        in_terms(message, tool_options(distance_command))
        == "x is missing; put the file there, or pass --backbone-weights PATH"
    )
    assert in_terms(message, tool_options(evaluate_command)) == "x is missing; put the file there"
    assert in_terms(message, {}) == "x is missing; put the file there"
    assert in_terms("give trust_code=True", tool_options(evaluate_command)) == "give --trust-code"
    assert in_terms("pass weights_only=True", {}) == "pass weights_only=True"  # nothing left: left as it was
