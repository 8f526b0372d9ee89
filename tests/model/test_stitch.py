"""The linear stitch between two networks' condition features: it recovers a planted per-stage map, its
R^2 says how well it fits, and its ridge does not depend on the features' scale."""
import pytest
import torch

from nnunet_unisegdiff.model.stitch import fit_stitch


def planted(seed=0, channels=(4, 8), sizes=(16, 8), batches=3, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    maps = [(torch.randn(c, c, generator=g), torch.randn(c, generator=g)) for c in channels]
    pairs = []
    for _ in range(batches):
        source = [torch.randn(2, c, s, s, generator=g) for c, s in zip(channels, sizes)]
        target = [torch.einsum("bc...,cd->bd...", f, w) + b.view(1, -1, 1, 1)
                  + noise * torch.randn(f.shape, generator=g) for f, (w, b) in zip(source, maps)]
        pairs.append((source, target))
    return maps, pairs


def test_recovers_a_planted_linear_map_per_stage():
    maps, pairs = planted()
    stitch = fit_stitch(iter(pairs), ridge=0.0)
    for (w, b), fw, fb, r2 in zip(maps, stitch.weights, stitch.biases, stitch.r2):
        assert torch.allclose(fw, w, atol=1e-4) and torch.allclose(fb, b, atol=1e-4)
        assert r2 == pytest.approx(1.0, abs=1e-6)
    source, target = pairs[0]
    for out, t in zip(stitch(source), target):
        assert out.shape == t.shape and torch.allclose(out, t, atol=1e-4)


def test_r2_drops_with_what_no_linear_map_explains():
    _, clean = planted(noise=0.0)
    _, noisy = planted(noise=3.0)
    r2_clean, r2_noisy = fit_stitch(iter(clean)).r2, fit_stitch(iter(noisy)).r2
    assert all(n < c - 0.1 for n, c in zip(r2_noisy, r2_clean)) and all(0 < n < 1 for n in r2_noisy)


def test_ridge_is_relative_to_the_features_scale():
    _, pairs = planted(noise=0.5)
    scaled = [([1000 * s for s in src], tgt) for src, tgt in pairs]
    a, b = fit_stitch(iter(pairs), ridge=0.1), fit_stitch(iter(scaled), ridge=0.1)
    for fa, fb in zip(a(pairs[0][0]), b(scaled[0][0])):
        assert torch.allclose(fa, fb, atol=1e-3)


def test_3d_features_and_no_pairs():
    g = torch.Generator().manual_seed(1)
    src = [torch.randn(2, 3, 4, 4, 4, generator=g)]
    stitch = fit_stitch(iter([(src, [2 * src[0] + 1])]), ridge=0.0)
    assert torch.allclose(stitch(src)[0], 2 * src[0] + 1, atol=1e-4)
    with pytest.raises(ValueError, match="no feature pairs"):
        fit_stitch(iter([]))
