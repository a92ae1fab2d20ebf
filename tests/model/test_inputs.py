"""What the metric takes as images: any integer dtype scaled like uint8, floats in their range, eval mode.

`LPIPS` and every model `load` returns scale integer images (int16, int64 ...) as uint8 and
refuse integers outside 0..255 and floats far outside [-1, 1] ([0, 1] with ``normalize=True``)
in one line; `LPIPS` comes back in eval mode like the `lpips` package's; `distance` turns an
allocation failure into one line that says to pass ``--resize``.
"""

from __future__ import annotations

import lpips as lpips_pkg
import pytest
import torch
from torch import Tensor

from lpips_lightning import LPIPS, load
from lpips_lightning.cli.main import main
from lpips_lightning.errors import ConfigError
from lpips_lightning.export.loaded import LoadedMetric
from lpips_lightning.export.metadata import MetricFacts

pytestmark = pytest.mark.usefixtures("one_thread")

INTEGER_DTYPES = [torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint8]
FORMATS = [".ckpt", ".pth", ".safetensors", ".pt", pytest.param(".onnx", marks=pytest.mark.slow)]
OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 96000000000 bytes. Error code 12"


def _uint8_pair(n=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))


@pytest.fixture(scope="module")
def package_and_ours(imagenet_cache, tmp_path_factory):
    """The `lpips` package's alex metric with random non-negative heads, and ours over the same heads."""
    torch.manual_seed(2)
    ref = lpips_pkg.LPIPS(net="alex", pretrained=False, verbose=False)
    with torch.no_grad():
        for lin in ref.lins:
            lin.model[-1].weight.uniform_(0, 1)
    path = tmp_path_factory.mktemp("heads") / "lin.pth"
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("lin") and not k.startswith("lins")}, path)
    return ref.eval(), LPIPS("alex", heads=str(path))


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_integer_images_are_scaled_like_uint8_as_the_lpips_package_computes(package_and_ours, dtype):
    ref, ours = package_and_ours
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        expected = ref(u0.float() / 127.5 - 1, u1.float() / 127.5 - 1).flatten()
        got = ours(u0.to(dtype), u1.to(dtype))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.features(u0.to(dtype))[0], ours.features(u0)[0])
    assert float(expected.min()) > 0.01  # images that differ: a wrong scaling could not pass


@pytest.mark.parametrize(
    ("make", "normalize", "words"),
    [
        (lambda u: u.to(torch.int64) + 1, False, ["integer images (torch.int64) must hold 0..255", "1..256"]),
        (lambda u: u.to(torch.int16) - 1, False, ["integer images (torch.int16) must hold 0..255", "-1..254"]),
        (lambda u: u.float(), False, ["float images outside [-1, 1]", "0..255", "pass uint8 images"]),
        (lambda u: u.float() / 127.5 - 1, True, ["outside [0, 1] (normalize=True)", "floats in [-1, 1]"]),
        (lambda u: u.float() / 255 * 3, False, ["float images outside [-1, 1]", "0..3"]),
        (lambda u: u.float().fill_(float("nan")), False, ["float images outside [-1, 1]", "nan"]),
        (lambda u: u > 127, False, ["images of dtype torch.bool", "pass uint8 images"]),
    ],
    ids=["int64-over", "int16-under", "float-0..255", "normalize-of-[-1,1]", "float-0..3", "nan", "bool"],
)
def test_images_out_of_range_are_refused_in_one_line(package_and_ours, make, normalize, words):
    _, ours = package_and_ours
    u0, u1 = _uint8_pair()
    with pytest.raises(ConfigError) as refused:
        ours(u0, make(u1), normalize=normalize)
    message = str(refused.value)
    assert "\n" not in message and all(w in message for w in words), message
    with pytest.raises(ConfigError):
        ours.features(make(u1), normalize=normalize)


def test_floats_slightly_beyond_their_range_still_compute(package_and_ours):
    """Resampling overshoot (bicubic, antialiasing) is no reason to refuse an image."""
    _, ours = package_and_ours
    u0, u1 = _uint8_pair()
    x0, x1 = (u.float() / 127.5 - 1 for u in (u0, u1))
    with torch.no_grad():
        assert torch.isfinite(ours(x0 * 1.3, x1 * 1.3)).all()
        assert torch.isfinite(ours((x0 + 1) / 2 * 1.2, (x1 + 1) / 2 * 1.2, normalize=True)).all()


def test_lpips_comes_back_in_eval_mode_like_the_lpips_package(imagenet_cache):
    assert not lpips_pkg.LPIPS(net="alex", verbose=False).training
    metric = LPIPS("alex", pretrained=False, heads="random", dropout=True)
    assert not metric.training and not any(m.training for m in metric.modules())
    x0, x1 = (u.float() / 127.5 - 1 for u in _uint8_pair())
    with torch.no_grad():
        torch.testing.assert_close(metric(x0, x1), metric(x0, x1), rtol=0, atol=0)  # no dropout at inference
        metric.train()
        assert metric.training and metric.heads.training
        torch.manual_seed(0)
        first = metric(x0, x1)
        assert not torch.equal(first, metric(x0, x1)), "dropout acts once the metric is in training mode"


class _Recorder(LoadedMetric):
    """A loaded metric that records the dtypes its format's `run` is given."""

    def __init__(self) -> None:
        super().__init__(MetricFacts("alex", "0.1", {"name": "alex"}, 31))
        self.seen: list[torch.dtype] = []

    def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
        self.seen += [x0.dtype, x1.dtype]
        return torch.zeros(x0.shape[0])


def test_a_loaded_metric_hands_its_format_uint8_for_any_integer_dtype():
    """Exports older than integer support scale uint8 only: every integer dtype reaches them as uint8."""
    recorder = _Recorder()
    u0, u1 = _uint8_pair()
    recorder(u0.to(torch.int64), u1.to(torch.int32))
    recorder(u0.float() / 255, u1.float() / 255, normalize=True)
    assert recorder.seen == [torch.uint8, torch.uint8, torch.float32, torch.float32]
    with pytest.raises(ConfigError, match="must hold 0..255"):
        recorder(u0.to(torch.int64) * 2, u1.to(torch.int64))
    assert len(recorder.seen) == 4, "refused before the file runs"


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_loaded_model_takes_int64_as_uint8_and_refuses_floats_in_0_255(trained, suffix):
    files = trained["lin"]
    model = load(files[suffix])
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        expected = model(u0, u1).flatten()
        for dtype in (torch.int64, torch.int16):
            torch.testing.assert_close(model(u0.to(dtype), u1.to(dtype)).flatten(), expected, rtol=0, atol=1e-6)
        with pytest.raises(ConfigError, match=r"float images outside \[-1, 1\]: values 0\.\.255"):
            model(u0.float(), u1.float())
        with pytest.raises(ConfigError, match="must hold 0..255"):
            model(u0.to(torch.int64) + 300, u1.to(torch.int64))


def test_a_torchscript_export_alone_scales_integers_and_refuses_floats_in_0_255(trained):
    """``torch.jit.load(file)(x0, x1)`` without this package: the scripted front checks as `LPIPS` does."""
    files = trained["lin"]
    scripted = torch.jit.load(str(files[".pt"]))
    u0, u1 = _uint8_pair()
    with torch.no_grad():
        torch.testing.assert_close(scripted(u0.to(torch.int64), u1.to(torch.int64)), scripted(u0, u1))
        torch.testing.assert_close(scripted(u0, u1), files.model(u0, u1), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception, match=r"float images outside \[-1, 1\]"):
            scripted(u0.float(), u1.float())


# --- distance: images too large for memory ----------------------------------------------------------
def _raise_oom(*args, **kwargs):
    raise RuntimeError(OOM)


def test_distance_out_of_memory_is_one_line_that_says_resize(imagenet_cache, pngs, capfd, monkeypatch):
    from conftest import assert_refused

    monkeypatch.setattr(LPIPS, "forward", _raise_oom)
    err = assert_refused(["distance", str(pngs[0]), str(pngs[1])], capfd, pngs[0].parent)
    assert "not enough memory to compare 44x52 images with backbone alex" in err and "pass --resize N" in err
    assert "DefaultCPUAllocator" not in err


def test_distance_with_a_model_out_of_memory_is_one_line(trained, pngs, capfd, monkeypatch):
    from conftest import assert_refused

    monkeypatch.setattr(LoadedMetric, "forward", _raise_oom)
    err = assert_refused(["distance", str(pngs[0]), str(pngs[1]), "--model", str(trained["lin"][".pt"])], capfd)
    assert "pass --resize N" in err


def test_distance_lets_other_runtime_errors_through(imagenet_cache, pngs, monkeypatch):
    """Only an allocation failure is the images' size: any other error is a bug to see whole."""

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(LPIPS, "forward", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        main(["distance", str(pngs[0]), str(pngs[1])])
