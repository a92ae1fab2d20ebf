"""EmbeddingDistance against 1 - cos computed by hand from timm / torchvision on the same (random) weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from lpips_lightning import EmbeddingDistance
from lpips_lightning.errors import ConfigError, WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = "vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "depth": 2}
CLIP = "vit_base_patch16_clip_224.openai"  # CLIP's own mean and std
CLIP_ARGS = {"img_size": 32, "depth": 1, "embed_dim": 64, "num_heads": 2}


def _weights(tmp_path, name: str, args: dict, seed: int):
    """A random timm model of `name` and the file of its state dict (its `backbone_weights`)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **args).eval()
    path = tmp_path / f"{name}-{seed}.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _by_hand(model, x, kind: str, size=32) -> torch.Tensor:
    """timm's embedding of [-1, 1] images `x`: resized (bicubic, antialiased) when needed, in its normalisation."""
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    tokens = model.forward_features(((x + 1) / 2 - mean) / std)
    cls, pooled = tokens[:, 0], model.forward_head(tokens, pre_logits=True)
    return {"cls": cls, "pool": pooled, "cls_pool": torch.cat([cls, pooled], 1)}[kind]


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _images(h=32, w=32, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1, torch.rand(n, 3, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize(("kind", "size"), [("cls", (32, 32)), ("pool", (32, 32)), ("cls_pool", (45, 38))])
def test_one_vit_is_one_minus_cos_of_timms_embedding(tmp_path, kind, size):
    model, path = _weights(tmp_path, VIT, VIT_ARGS, seed=1)
    metric = EmbeddingDistance(f"timm:{VIT}", kind, pretrained=False, backbone_weights=path, backbone_args=VIT_ARGS)
    assert not metric.training
    x0, x1 = _images(*size)
    with torch.no_grad():
        want = _one_minus_cos(_by_hand(model, x0, kind), _by_hand(model, x1, kind))
        got = metric(x0, x1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert want.abs().min() > 1e-3  # distinct images: a real distance, not zeros on both sides


def test_a_two_model_ensemble_concatenates_the_embeddings_each_in_its_normalisation(tmp_path):
    vit, vit_path = _weights(tmp_path, VIT, VIT_ARGS, seed=2)
    clip, clip_path = _weights(tmp_path, CLIP, CLIP_ARGS, seed=3)
    assert clip.pretrained_cfg["mean"] != vit.pretrained_cfg["mean"]
    metric = EmbeddingDistance(
        [f"timm:{VIT}", f"timm:{CLIP}"], ["cls", "pool"], pretrained=False,
        backbone_weights=[vit_path, clip_path], backbone_args=[VIT_ARGS, CLIP_ARGS],
    )  # fmt: skip
    x0, x1 = _images(40, 40)
    with torch.no_grad():
        e0 = torch.cat([_by_hand(vit, x0, "cls"), _by_hand(clip, x0, "pool")], 1)
        e1 = torch.cat([_by_hand(vit, x1, "cls"), _by_hand(clip, x1, "pool")], 1)
        torch.testing.assert_close(metric(x0, x1), _one_minus_cos(e0, e1), rtol=0, atol=1e-5)
        # uint8 and [0, 1] inputs give the same distances as their [-1, 1] floats
        u0, u1 = (((x + 1) * 127.5).round().to(torch.uint8) for x in (x0, x1))
        torch.testing.assert_close(metric(u0, u1), metric(u0.float() / 255, u1.float() / 255, normalize=True))
    assert metric.dim == 192 + 64 and metric.backbone_spec["features"] == ["cls", "pool"]


def test_a_torchvision_backbone_pools_its_penultimate_features(tmp_path):
    torch.manual_seed(4)
    net = torchvision.models.resnet18().eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    metric = EmbeddingDistance("torchvision:resnet18", "pool", pretrained=False, backbone_weights=tmp_path / "r18.pt")
    net.fc = torch.nn.Identity()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    x0, x1 = _images(224, 224, n=2)
    with torch.no_grad():
        want = _one_minus_cos(*(net(((x + 1) / 2 - mean) / std) for x in (x0, x1)))
        torch.testing.assert_close(metric(x0, x1), want, rtol=0, atol=1e-5)


def test_the_mlp_head_and_lora_start_where_the_plain_metric_is_and_state_rebuilds(tmp_path):
    _, path = _weights(tmp_path, VIT, VIT_ARGS, seed=5)
    plain = EmbeddingDistance(f"timm:{VIT}", pretrained=False, backbone_weights=path, backbone_args=VIT_ARGS)
    lora = EmbeddingDistance(
        f"timm:{VIT}", pretrained=False, backbone_weights=path, backbone_args=VIT_ARGS, lora_rank=2
    )
    x0, x1 = _images()
    with torch.no_grad():
        torch.testing.assert_close(lora(x0, x1), plain(x0, x1))  # LoRA's B starts at zero
        head = EmbeddingDistance(f"timm:{VIT}", pretrained=False, backbone_args=VIT_ARGS, head="mlp")
        again = EmbeddingDistance.from_spec(head.backbone_spec)
        again.load_state_dict(head.state_dict())
        torch.testing.assert_close(again(x0, x1), head(x0, x1))
        e = head.net(head.prepare(x0))[0]
        torch.testing.assert_close(head.embed([e]), head.head.fc2(F.relu(head.head.fc1(e))) + e)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(backbone=f"timm:{VIT}", features=["cls", "cls"]), ConfigError, "features: 2 features for 1 backbone"),
        (dict(backbone="timm:resnet18", features="cls"), ConfigError, "features cls: backbone timm:resnet18 has no"),
        (dict(backbone="torchvision:resnet18", features="cls"), ConfigError, "gives its pooled features only"),
        (dict(backbone="alex"), ConfigError, "embedding metrics take timm:<model>, torchvision:<model>"),
        (dict(backbone=f"timm:{VIT}", features="patch"), ConfigError, "unknown features 'patch'"),
        (dict(backbone=f"timm:{VIT}", head="linear"), ConfigError, "unknown head 'linear'"),
        (dict(backbone=[f"timm:{VIT}"] * 2, backbone_weights=["a.pt"] * 3), ConfigError, "3 weight files for 2"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(options, error, message):
    with pytest.raises(error, match=message) as err:
        vit = "vit" in str(options["backbone"])
        EmbeddingDistance(pretrained=False, **{"backbone_args": VIT_ARGS if vit else None, **options})
    assert "\n" not in str(err.value)


def test_backbone_weights_of_another_network_are_refused_in_one_line(tmp_path):
    _, path = _weights(tmp_path, VIT, {**VIT_ARGS, "depth": 1}, seed=6)  # one block, not two
    with pytest.raises(WeightsError, match=str(path)) as err:
        EmbeddingDistance(f"timm:{VIT}", pretrained=False, backbone_weights=path, backbone_args=VIT_ARGS)
    assert "\n" not in str(err.value)
