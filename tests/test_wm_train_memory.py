"""World-model training memory levers: gradient accumulation and activation checkpointing give the
same update as the plain step (issue 18 item 2)."""
import copy

import pytest
import torch

from wmpo.data.clips import LatentWindowDataset
from wmpo.models.world_model import WorldModelConfig
from wmpo.train.world_model import WMTrainConfig, WMTrainer


def _trainer(**kw):
    torch.manual_seed(0)
    cfg = WorldModelConfig(latent_channels=4, latent_size=8, hidden=32, spatial_blocks=2, temporal_blocks=2, heads=2,
                           num_context=2, chunk_len=4, action_dim=7)
    lat = [torch.randn(12, 4, 8, 8) for _ in range(3)]
    acts = [torch.rand(11, 7) * 2 - 1 for _ in range(3)]
    data = LatentWindowDataset(lat, acts, cfg.num_context, cfg.chunk_len)
    tcfg = WMTrainConfig(model=cfg, steps=2, batch_size=4, lr=1e-3, ema_decay=0.0, grad_clip=1e9, **kw)
    return WMTrainer(tcfg, data, torch.device("cpu"))


@pytest.mark.parametrize("kw", [{"grad_accum": 2}, {"grad_accum": 4}, {"grad_checkpointing": True},
                                {"grad_accum": 2, "grad_checkpointing": True}])
def test_accumulation_and_checkpointing_give_the_plain_update(kw):
    plain, other = _trainer(), _trainer(**kw)
    other.model.load_state_dict(copy.deepcopy(plain.model.state_dict()))
    l0, l1 = plain.step(), other.step()
    assert l1 == pytest.approx(l0, rel=1e-5)
    for (name, a), b in zip(plain.model.named_parameters(), other.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_recomputes_in_backward_and_only_in_training():
    tr = _trainer(grad_checkpointing=True)
    calls = []
    orig = tr.model._block
    tr.model._block = lambda *a, **k: calls.append(1) or orig(*a, **k)
    tr.step()
    n = len(tr.model.blocks)
    assert len(calls) == 2 * n  # forward once, recomputed once in backward
    calls.clear()
    tr.model.eval()
    with torch.no_grad():
        x = torch.randn(1, 6, 4, 8, 8)
        tr.model(x, torch.rand(1, 6), torch.zeros(1, 6, 7))
    assert len(calls) == n


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ValueError, match="grad_accum"):
        _trainer(grad_accum=3).step()
