"""Provenance: versions, the command line, and each input file with its sha256, hashed once."""

from __future__ import annotations

import hashlib
import json
import os
from types import SimpleNamespace

import torch

from lpips_lightning import provenance as prov
from lpips_lightning.train.callbacks import SaveConfig


def test_sha256_streams_the_whole_file_and_rehashes_a_rewritten_one(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    data = os.urandom(3 * prov.CHUNK + 17)
    path.write_bytes(data)
    assert prov.sha256_file(path) == hashlib.sha256(data).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    prov.sha256_file(path)
    assert reads == []  # remembered: read once
    path.write_bytes(data[::-1])
    os.utime(path, ns=(1, 1))
    assert prov.sha256_file(path) == hashlib.sha256(data[::-1]).hexdigest()


def test_record_holds_versions_command_data_and_models(tmp_path):
    data, model = tmp_path / "j.h5", tmp_path / "m.ckpt"
    data.write_bytes(b"judgments")
    model.write_bytes(b"model")
    record = prov.provenance(data, [model, "alex"], argv=["lpips-lightning", "evaluate", "a b"])
    assert record["command"] == "lpips-lightning evaluate 'a b'"
    assert record["versions"]["lpips-lightning"]
    assert record["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert record["data"] == {"path": str(data), "bytes": 9, "sha256": hashlib.sha256(b"judgments").hexdigest()}
    assert record["models"][0]["sha256"] == hashlib.sha256(b"model").hexdigest()
    assert record["models"][1] == {"name": "alex"}  # a built-in name, not a file
    out = prov.write_provenance(tmp_path / "provenance.json", record)
    assert json.loads(out.read_text()) == record
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_run_folder_records_its_data_checkpoint_and_backbone_file(tmp_path):
    data, ckpt, weights = tmp_path / "j.h5", tmp_path / "last.ckpt", tmp_path / "backbone.pth"
    for f in (data, ckpt, weights):
        f.write_bytes(f.name.encode())
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(file=data), ckpt_path=str(ckpt), loggers=[], default_root_dir=str(tmp_path)
    )
    module = SimpleNamespace(hparams={"variant": "lin", "backbone_weights": [str(weights)]})
    callback = SaveConfig(None, None, config_filename="config-resumed-20260101-000000.yaml")
    written = callback.save_provenance(trainer, module)
    assert written.name == "provenance-resumed-20260101-000000.json"
    record = json.loads(written.read_text())
    assert record["data"]["path"] == str(data)
    assert [m["path"] for m in record["models"]] == [str(ckpt), str(weights)]
