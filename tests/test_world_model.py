import pytest
import torch

from wmpo import ops
from wmpo.models.world_model import WorldModel, WorldModelConfig, frame_causal_attention, world_model_flops

torch.set_num_threads(1)


def tiny_cfg(**kw):
    d = dict(latent_channels=4, latent_size=8, patch=2, hidden=64, spatial_blocks=2, temporal_blocks=2, heads=4,
             num_context=2, chunk_len=4, action_dim=7)
    d.update(kw)
    return WorldModelConfig(**d)


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    m = WorldModel(cfg).eval()
    with torch.no_grad():  # zero-init layers would hide dependencies: randomize everything
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


def inputs(cfg, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = cfg.window
    x = torch.randn(B, T, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    t = torch.rand(B, T, generator=g)
    t[:, : cfg.num_context] = cfg.t_context
    a = torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1
    return x, t, a


def test_shapes_and_zero_init_output():
    cfg = tiny_cfg()
    m = WorldModel(cfg)
    x, t, a = inputs(cfg)
    v = m(x, t, a)
    assert v.shape == x.shape
    assert torch.all(v == 0)  # final layer zero-init
    assert len(m.blocks) == 4 and [b.kind for b in m.blocks] == ["spatial", "temporal", "spatial", "temporal"]


def test_bad_input_errors():
    cfg = tiny_cfg()
    m = WorldModel(cfg)
    x, t, a = inputs(cfg)
    with pytest.raises(ValueError, match="actions"):
        m(x, t, a[..., :3])
    with pytest.raises(ValueError, match="x_t"):
        m(x[:, :, :2], t, a)
    with pytest.raises(ValueError, match="t_frames"):
        m(x, t[:, :3], a)


@pytest.mark.parametrize("gate_offset", [0.0, 1.0])
def test_cached_equals_uncached(gate_offset):
    cfg = tiny_cfg(gate_offset=gate_offset)
    m = random_model(cfg)
    x, t, a = inputs(cfg, B=3)
    c = cfg.num_context
    with torch.no_grad():
        full = m(x, t, a)
        cache = m.build_context_cache(x[:, :c], a[:, :c])
        cached = m.forward_cached(x[:, c:], t[:, c:], a[:, c:], cache)
    assert full.abs().mean() > 1e-3
    torch.testing.assert_close(cached, full[:, c:], rtol=1e-4, atol=1e-5)


def test_action_of_frame_j_changes_no_earlier_frame():
    cfg = tiny_cfg()
    m = random_model(cfg)
    x, t, a = inputs(cfg)
    c, T = cfg.num_context, cfg.window
    with torch.no_grad():
        base = m(x, t, a)
        for j in range(c, T):
            a2 = a.clone()
            a2[:, j] = -a2[:, j] + 0.5
            out = m(x, t, a2)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
            assert (out[:, j] - base[:, j]).abs().max() > 1e-4  # the frame itself does change


def test_context_never_sees_predicted_frames():
    cfg = tiny_cfg()
    m = random_model(cfg)
    x, t, a = inputs(cfg)
    c = cfg.num_context
    with torch.no_grad():
        base = m(x, t, a)
        x2 = x.clone()
        x2[:, c:] = torch.randn_like(x2[:, c:])
        out = m(x2, t, a)
    torch.testing.assert_close(out[:, :c], base[:, :c], rtol=0, atol=1e-6)
    assert (out[:, c:] - base[:, c:]).abs().max() > 1e-3


def test_reference_ops_match_public_ops():
    cfg = tiny_cfg()
    m = random_model(cfg)
    x, t, a = inputs(cfg)
    with torch.no_grad():
        y1 = m(x, t, a)
        with ops.reference_ops():
            y2 = m(x, t, a)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)


def test_frame_causal_attention_offset_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 2, 3, 8, generator=g)
    k = torch.randn(5, 2, 5, 8, generator=g)
    v = torch.randn(5, 2, 5, 8, generator=g)
    out = frame_causal_attention(q, k, v, num_cached=2)
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    mask = torch.ones(3, 5, dtype=torch.bool).tril(2)
    ref = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gradients_reach_all_parameters():
    cfg = tiny_cfg()
    m = random_model(cfg)
    x, t, a = inputs(cfg)
    m(x, t, a)[:, cfg.num_context:].pow(2).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_flops_count_positive_and_scales():
    cfg = tiny_cfg()
    f1 = world_model_flops(cfg, 1, cfg.chunk_len, cfg.window)
    f2 = world_model_flops(cfg, 2, cfg.chunk_len, cfg.window)
    assert f1 > 0 and abs(f2 / f1 - 2) < 1e-6
