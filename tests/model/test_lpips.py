"""The LPIPS model against the `lpips` package and torchmetrics, loading rules, gradients."""

from __future__ import annotations

import lpips as lpips_pkg
import pytest
import torch

from lpips_lightning import LPIPS
from lpips_lightning.backbones import Backbone
from lpips_lightning.backbones.classic import BACKBONES, cache_file
from lpips_lightning.errors import ConfigError, WeightsError
from lpips_lightning.model.lpips import dropout_half, normalize_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


class References(dict):
    """{net: the `lpips` package's LPIPS over (fake) ImageNet weights, random non-negative heads}, built on first use.

    Its constructor's ``version``, ``spatial`` and ``lpips`` only set the attributes of those names
    that its forward reads (its heads are random either way): `reference` sets them per call.
    """

    def __missing__(self, net: str) -> lpips_pkg.LPIPS:
        torch.manual_seed(1)
        ref = lpips_pkg.LPIPS(net=net, pretrained=False, verbose=False)
        with torch.no_grad():  # random non-negative heads, the same in both models
            for lin in ref.lins:
                lin.model[-1].weight.uniform_(0, 1)
        self[net] = ref.eval()
        return self[net]


@pytest.fixture(scope="module")
def references(imagenet_cache) -> References:
    return References()


def reference(ref: lpips_pkg.LPIPS, x0, x1, version="0.1", spatial=False, lpips=True) -> torch.Tensor:
    """`ref`'s distances as ``lpips.LPIPS(net, version=..., spatial=..., lpips=...)`` gives them."""
    before = ref.version, ref.spatial, ref.lpips
    ref.version, ref.spatial, ref.lpips = version, spatial, lpips
    try:
        with torch.no_grad():
            return ref(x0, x1)
    finally:
        ref.version, ref.spatial, ref.lpips = before


def _lin_file(ref: lpips_pkg.LPIPS, path) -> str:
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("lin") and not k.startswith("lins")}, path)
    return str(path)


class RandomMetrics(dict):
    """{net: LPIPS(net, pretrained=False, heads="random") in eval mode}, built on first use, shared by tests."""

    def __missing__(self, net: str) -> LPIPS:
        self[net] = LPIPS(net, pretrained=False, heads="random").eval()
        return self[net]


@pytest.fixture(scope="module")
def random_metrics() -> RandomMetrics:
    return RandomMetrics()


@pytest.mark.parametrize("version", ["0.1", "0.0"])
@pytest.mark.parametrize("net", list(BACKBONES))
def test_parity_with_lpips_package(references, tmp_path, net, version):
    ref = references[net]
    ours = LPIPS(net, version=version, heads=_lin_file(ref, tmp_path / "lin.pth")).eval()
    x0, x1 = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    expected = reference(ref, x0, x1, version).flatten()
    with torch.no_grad():
        torch.testing.assert_close(ours(x0, x1), expected, rtol=1e-5, atol=0)
        # the untrained baseline (lpips=False) too
        base = reference(ref, x0, x1, version, lpips=False).flatten()
        torch.testing.assert_close(LPIPS(net, version=version, heads=None)(x0, x1), base, rtol=1e-5, atol=0)


@pytest.mark.parametrize("net", list(BACKBONES))
def test_parity_spatial(references, tmp_path, net):
    ref = references[net]
    ours = LPIPS(net, heads=_lin_file(ref, tmp_path / "lin.pth"), spatial=True).eval()
    x0, x1 = torch.rand(2, 2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        out = ours(x0, x1)
    assert out.shape == (2, 1, 48, 64)
    torch.testing.assert_close(out, reference(ref, x0, x1, spatial=True), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("net", list(BACKBONES))
def test_parity_with_torchmetrics_official_heads(imagenet_cache, net):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    tm = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none")
    ours = LPIPS(net, heads="official").eval()
    x0, x1 = torch.rand(2, 3, 3, 64, 64)
    # torchmetrics puts its epsilon inside the square root (1e-8): equal to well under 1e-4
    torch.testing.assert_close(ours(x0, x1, normalize=True), tm(x0 * 2 - 1, x1 * 2 - 1), rtol=1e-4, atol=0)
    assert (ours.heads[0].weight > 0).any()


def test_input_ranges_agree(imagenet_cache):
    m = LPIPS("alex", heads="official").eval()
    u0, u1 = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    f0, f1 = u0.float() / 255, u1.float() / 255
    torch.testing.assert_close(m(u0, u1), m(f0, f1, normalize=True), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m(u0, u1), m(f0 * 2 - 1, f1 * 2 - 1), rtol=1e-5, atol=1e-7)


def test_pretrained_cache_hit_loads_the_file(imagenet_cache):
    state = torch.load(cache_file("alex"), weights_only=True)
    net = Backbone("alex", pretrained=True)
    torch.testing.assert_close(net.slices[0][0].weight, state["features.0.weight"])


def test_pretrained_cache_miss_names_file_folder_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    # no network here either way: make sure no download is attempted for real
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError) as err:
        LPIPS("alex", heads=None)
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "empty") in msg
    assert "backbone_weights=PATH" in msg and "pretrained=False" in msg and "\n" not in msg


def test_backbone_weights_from_explicit_path(tmp_path):
    torch.manual_seed(3)
    sd = BACKBONES["squeeze"].constructor(weights=None).state_dict()
    torch.save(sd, tmp_path / "sq.pth")
    net = Backbone("squeeze", weights=tmp_path / "sq.pth")
    torch.testing.assert_close(net.slices[6][0].expand1x1.weight, sd["features.12.expand1x1.weight"])
    bad = {k: v for k, v in sd.items() if k != "features.3.squeeze.weight"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad.pth: .*missing keys 3.squeeze.weight"):
        Backbone("squeeze", weights=tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="no such weights file"):
        Backbone("alex", weights=tmp_path / "nope.pth")


def test_strict_heads_refuse_wrong_keys_and_shapes(tmp_path):
    good = LPIPS("alex", pretrained=False, heads="random").lpips_state_dict()
    wrong_shape = dict(good, **{"lin2.model.1.weight": torch.zeros(1, 100, 1, 1)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"shape.pth.*wrong shapes lin2.model.1.weight \(1, 100, 1, 1\)"):
        LPIPS("alex", pretrained=False, heads=tmp_path / "shape.pth")
    renamed = {k.replace("model.1", "model.0"): v for k, v in good.items()}
    torch.save(renamed, tmp_path / "keys.pth")
    with pytest.raises(WeightsError, match=r"missing keys lin0.model.1.weight.*unexpected keys lin0.model.0.weight"):
        LPIPS("alex", pretrained=False, heads=tmp_path / "keys.pth")
    # alex heads into squeeze: two taps missing, others misshapen
    torch.save(good, tmp_path / "alex.pth")
    with pytest.raises(WeightsError, match="missing keys lin5.model.1.weight, lin6.model.1.weight"):
        LPIPS("squeeze", pretrained=False, heads=tmp_path / "alex.pth")


def test_heads_roundtrip_with_backbone(tmp_path):
    a = LPIPS("alex", pretrained=False, heads="random")
    torch.save(a.lpips_state_dict(with_backbone=True), tmp_path / "full.pth")
    b = LPIPS("alex", pretrained=False, heads=tmp_path / "full.pth")
    x0, x1 = torch.rand(2, 2, 3, 32, 32)
    torch.testing.assert_close(a(x0, x1), b(x0, x1))


def test_official_heads_refuse_version_0_0():
    with pytest.raises(ConfigError, match="0.1 only"):
        LPIPS("alex", version="0.0", pretrained=False, heads="official")


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="alex, vgg, squeeze"):
        LPIPS("resnet", pretrained=False)


@pytest.mark.parametrize("heads", ["random", None])
@pytest.mark.parametrize("net", list(BACKBONES))
def test_finite_gradients_when_images_are_equal(net, heads):
    torch.manual_seed(0)
    m = LPIPS(net, pretrained=False, heads=heads, tune_backbone=True)
    with torch.no_grad():  # first tap ~1e-24: its squared norm underflows to 0, where sqrt'(0) gave NaN
        conv = m.net.slices[0][0]
        conv.weight.mul_(1e-24)
        conv.bias.copy_(conv.bias.abs() * 1e-24 + 1e-25)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    x, y = x.clone().requires_grad_(), x.clone().requires_grad_()
    d = m(x, y)
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    for p in m.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_nan_fix_keeps_forward_value():
    x = torch.randn(4, 64, 8, 8).relu() * torch.logspace(-6, 2, 4).view(4, 1, 1, 1)
    plain = x / (torch.sqrt((x**2).sum(1, keepdim=True)) + 1e-10)
    torch.testing.assert_close(normalize_tensor(x), plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("net", list(BACKBONES))
def test_backbone_table(net, random_metrics):
    entry = BACKBONES[net]
    m = random_metrics[net]
    x0, x1 = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    feats = m.features(x0)
    assert [f.shape[1] for f in feats] == list(entry.channels) == [h.in_channels for h in m.heads]
    assert all(torch.isfinite(f).all() for f in feats)
    d = m(x0, x1)
    assert d.shape == (2,) and torch.isfinite(d).all()
    d.sum().backward()
    assert all(p.grad is None for p in m.net.parameters()), "a frozen backbone received gradients"
    assert all(h.weight.grad is not None for h in m.heads)


def test_features_once_equals_forward():
    m = LPIPS("alex", pretrained=False, heads="random").eval()
    x0, x1 = torch.rand(2, 3, 3, 64, 64) * 2 - 1
    f0, f1 = m.features(x0), m.features(x1)
    torch.testing.assert_close(m.distance(f0, f1), m(x0, x1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", list(BACKBONES))
def test_min_size_is_the_smallest_input_that_runs_through_every_tap(net, random_metrics):
    m = BACKBONES[net].min_size
    backbone = random_metrics[net].net  # Backbone(net, pretrained=False), frozen: in eval mode
    with torch.no_grad():
        assert len(backbone(torch.zeros(1, 3, m, m))) == len(BACKBONES[net].taps)
        for shape in ((m - 1, m + 40), (m + 40, m - 1)):  # each side on its own
            with pytest.raises(RuntimeError):
                backbone(torch.zeros(1, 3, *shape))


@pytest.mark.parametrize("net", list(BACKBONES))
def test_check_size_names_the_minimum(net, random_metrics):
    m = BACKBONES[net].min_size
    metric = random_metrics[net]
    assert metric.min_size == m
    metric.check_size(m, m)
    message = f"images of {m - 1}x{m + 9} pixels are smaller than the {m}x{m} minimum of backbone {net}"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        metric.check_size(m - 1, m + 9)
    with pytest.raises(ConfigError, match=f"^2afc/val/cnn: {message}$"):
        metric.check_size(m - 1, m + 9, where="2afc/val/cnn")
    tiny = torch.zeros(2, 3, 1, 1)
    for call in (lambda: metric(tiny, tiny), lambda: metric.features(tiny), lambda: metric(tiny.byte(), tiny.byte())):
        with pytest.raises(ConfigError, match="images of 1x1 pixels are smaller than"):
            call()
    edge = torch.rand(2, 3, m, m) * 2 - 1
    with torch.no_grad():
        assert torch.isfinite(metric(edge, -edge)).all()


def test_forward_refuses_batches_that_are_not_rgb_images():
    metric = LPIPS("alex", pretrained=False, heads="random").eval()
    with pytest.raises(ConfigError, match=r"same shape, got \(1, 3, 64, 64\) and \(1, 3, 64, 32\)"):
        metric(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 32))
    for shape in ((3, 64, 64), (1, 1, 64, 64)):
        with pytest.raises(ConfigError, match=r"\(N, 3, H, W\) batches of RGB images"):
            metric(torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_is_fair_per_bit_and_scales_by_two(dtype):
    torch.manual_seed(0)
    x = torch.full((4000, 64), 3.0, dtype=dtype, requires_grad=True)
    y = dropout_half(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert set(y.unique().tolist()) == {0.0, 6.0}
    kept = (y != 0).float()
    # every element position is fair (4,000 draws each: 4 sigma is 0.032)
    assert (kept.mean(0) - 0.5).abs().max() < 0.032
    assert abs(kept.mean().item() - 0.5) < 0.005
    # neighbouring elements are independent
    assert abs((kept[:, 1:] == kept[:, :-1]).float().mean().item() - 0.5) < 0.005
    y.sum().backward()
    assert torch.equal(x.grad, 2 * kept.to(dtype))
    # odd sizes: the mask is cut to the tensor; a seeded draw is reproducible
    torch.manual_seed(1)
    a = dropout_half(torch.ones(3, 5, 7))
    torch.manual_seed(1)
    assert torch.equal(a, dropout_half(torch.ones(3, 5, 7)))
