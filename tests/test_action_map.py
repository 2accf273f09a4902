"""Policy tokens -> the world model's normalized actions: the numbers, the identity case, the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wmpo.data.clips import normalize_actions
from wmpo.models.tokenizer import ActionTokenizer
from wmpo.rollout.action_map import TokenActionMap, world_model_action_map


class Env:
    """What the engine reads of a world-model env: chunk length K, action dim A, action_stats."""

    def __init__(self, stats, K=4, A=3):
        self.action_stats, self.K, self.A = stats, K, A


def test_map_equals_decode_then_world_model_normalization():
    # the policy's demos: narrow ranges; the world model's corpus: wider, shifted, one constant dim
    tok = ActionTokenizer(np.array([-0.2, 0.0, -1.0, 0.5]), np.array([0.2, 0.4, 1.0, 0.5]))  # dim 3 constant
    wm_stats = {"q01": np.array([-1.0, -0.1, 0.5, -1.0]), "q99": np.array([1.0, 0.3, 0.5, 1.0])}  # dim 2 constant
    m = TokenActionMap(tok, wm_stats)
    assert not m.identity
    tokens = torch.randint(0, 256, (5, 4, 4), generator=torch.Generator().manual_seed(0))
    tokens[0, 0] = torch.tensor([0, 128, 0, 128])
    tokens[0, 1] = torch.tensor([255, 255, 7, 0])
    got = m(tokens)
    # the long way: tokens -> env actions (tokenizer stats) -> the world model's normalizer
    want = normalize_actions(tok.decode(tokens.numpy()), wm_stats)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # hand-checked values: dim 0, token 0 -> centre -1 + 1/256 -> env -0.2 + 0.2/256 -> wm 2*(env+1)/2 - 1
    assert got[0, 0, 0].item() == pytest.approx(-0.2 + 0.4 / 512, abs=1e-6)
    # dim 1, token 128 -> centre 1/256 -> env 0.2 + 0.4/512 -> wm 2 (env + 0.1) / 0.4 - 1
    assert got[0, 0, 1].item() == pytest.approx(2 * (0.2 + 0.4 / 512 + 0.1) / 0.4 - 1, abs=1e-6)
    # token 255 -> env 0.4 - 0.4/512, above the world model's q99 = 0.3: clipped to 1
    assert got[0, 1, 1].item() == 1.0 and got[0, 1, 0].item() == pytest.approx(0.2 - 0.4 / 512, abs=1e-6)
    assert (got[..., 2] == 0).all()  # the world model's constant dim: 0, as in its training
    # dim 3: the tokenizer's constant 0.5 -> 2 * (0.5 + 1) / 2 - 1 = 0.5, whatever the token
    torch.testing.assert_close(got[..., 3], torch.full_like(got[..., 3], 0.5))
    # env actions outside the world model's range clip to [-1, 1]
    wide = TokenActionMap(ActionTokenizer(-3 * np.ones(4), 3 * np.ones(4)), wm_stats)(tokens)
    assert wide.abs().max() <= 1.0 and (wide[..., 0].abs() == 1.0).any()


def test_equal_stats_are_the_identity_bit_for_bit():
    q01, q99 = np.array([-0.3, -1.0, 0.0]), np.array([0.3, 1.0, 2.0])
    tok = ActionTokenizer(q01, q99)
    m = world_model_action_map(tok, Env({"q01": q01.astype(np.float32), "q99": q99.astype(np.float32)}), 4, 3)
    assert m.identity
    tokens = torch.randint(0, 256, (3, 4, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(tokens), tok.detokenize(tokens))
    # an env that declares no action space takes the tokenizer's normalized actions as they are
    class Bare:
        K, A = 4, 3

    assert world_model_action_map(tok, Bare(), 4, 3).identity


def test_refuses_incompatible_pairs():
    tok = ActionTokenizer(-np.ones(3), np.ones(3))
    stats = {"q01": -np.ones(3), "q99": np.ones(3)}
    with pytest.raises(ValueError, match="chunk_len 4"):
        world_model_action_map(tok, Env(stats, K=8), 4, 3)
    with pytest.raises(ValueError, match="action_dim 3"):
        world_model_action_map(tok, Env({"q01": -np.ones(7), "q99": np.ones(7)}, A=7), 4, 3)
    with pytest.raises(ValueError, match="tokenizer: expected action_dim 3"):
        world_model_action_map(ActionTokenizer(-np.ones(7), np.ones(7)), Env(stats), 4, 3)
    with pytest.raises(ValueError, match="no action statistics"):
        world_model_action_map(tok, Env(None), 4, 3)

    class NoStats:
        action_dim = 3

        def detokenize(self, t):
            return t.float() / 128 - 1

    with pytest.raises(ValueError, match="tokenizer: expected an ActionTokenizer with q01/q99"):
        world_model_action_map(NoStats(), Env(stats), 4, 3)
    with pytest.raises(ValueError, match="world model action_stats: expected statistics for 3"):
        TokenActionMap(tok, {"q01": np.zeros(2), "q99": np.ones(2)})
