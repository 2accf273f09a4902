"""ActionTokenizer: normalization, 256-bin round trip within half a bin, numpy == torch, state."""
import numpy as np
import pytest
import torch

from wmpo.data.loader import action_stats as action_stats_from_episodes
from wmpo.models.tokenizer import ActionTokenizer


def make_tok():
    q01 = np.array([-0.5, -1.0, 0.0, -0.2, -0.3, -0.1, -1.0])
    q99 = np.array([0.5, 1.0, 2.0, 0.2, 0.3, 0.1, 1.0])
    return ActionTokenizer(q01, q99, num_bins=256)


def test_round_trip_within_half_a_bin():
    tok = make_tok()
    u = np.random.default_rng(0).uniform(-1, 1, size=(1000, 7))
    u[:7, :] = -1.0
    u[7:14, :] = 1.0
    back = tok.detokenize(tok.tokenize(u))
    assert np.abs(back - u).max() <= tok.bin_width / 2 + 1e-6
    # and in env space: within half a bin scaled by the range
    env = tok.unnormalize(u)
    err = np.abs(tok.decode(tok.encode(env)) - env)
    assert np.all(err <= (tok.q99 - tok.q01) / 256 + 1e-5)


def test_tokens_cover_all_bins_and_centres_are_fixed_points():
    tok = make_tok()
    ids = np.arange(256)[:, None].repeat(7, 1)
    c = tok.detokenize(ids)
    assert c.min() > -1 and c.max() < 1
    np.testing.assert_array_equal(tok.tokenize(c), ids)
    assert tok.tokenize(np.full(7, -1.0)).tolist() == [0] * 7
    assert tok.tokenize(np.full(7, 1.0)).tolist() == [255] * 7


def test_normalize_clips_and_inverts():
    tok = make_tok()
    x = np.array([[0.25, 0.0, 1.0, 10.0, -10.0, 0.0, 1.0]])
    u = tok.normalize(x)
    np.testing.assert_allclose(u, [[0.5, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(tok.unnormalize(u)[0, :3], x[0, :3], atol=1e-6)


def test_torch_matches_numpy():
    tok = make_tok()
    x = np.random.default_rng(1).normal(size=(4, 8, 7)).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(tok.normalize(t).numpy(), tok.normalize(x), atol=1e-6)
    np.testing.assert_array_equal(tok.encode(t).numpy(), tok.encode(x))
    assert tok.encode(t).dtype == torch.int64
    np.testing.assert_allclose(tok.decode(tok.encode(t)).numpy(), tok.decode(tok.encode(x)), atol=1e-5)
    assert tok.detokenize(torch.tensor([0, 255])).dtype == torch.float32


def test_state_dict_and_errors():
    tok = make_tok()
    tok2 = ActionTokenizer.from_state_dict(tok.state_dict())
    np.testing.assert_array_equal(tok2.q99, tok.q99)
    assert tok2.num_bins == 256
    with pytest.raises(ValueError, match="actions"):
        tok.normalize(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="q99"):
        ActionTokenizer(np.zeros(7), np.ones(6))
    # constant dimension does not divide by zero
    c = ActionTokenizer(np.zeros(2), np.array([0.0, 1.0]))
    assert np.isfinite(c.normalize(np.array([[0.0, 0.5]]))).all()


def test_constant_dimension_normalizes_to_zero_like_the_world_model():
    from wmpo.data.clips import normalize_actions

    q01, q99 = np.array([0.3, -1.0, 2.0]), np.array([0.3, 1.0, 2.0])  # dims 0 and 2 are constant
    tok = ActionTokenizer(q01, q99)
    x = np.array([[0.3, 0.5, 2.0], [0.3, -1.0, 2.0], [0.9, 1.0, -5.0]])
    expected = np.array([[0.0, 0.5, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(tok.normalize(x), expected)
    np.testing.assert_array_equal(tok.normalize(torch.tensor(x)).numpy(), expected)
    # the world model's normalizer gives the same values
    np.testing.assert_array_equal(normalize_actions(x, {"q01": q01, "q99": q99}).numpy(), expected.astype(np.float32))
    # and back: a constant dimension decodes to its constant, whatever the token
    back = tok.decode(np.array([[0, 128, 255], [255, 0, 17]]))
    np.testing.assert_allclose(back[:, [0, 2]], [[0.3, 2.0], [0.3, 2.0]], atol=1e-7)
    np.testing.assert_allclose(tok.unnormalize(torch.zeros(3)).numpy(), [0.3, 0.0, 2.0], atol=1e-7)


def test_stats_from_episodes():
    class E:
        def __init__(self, a):
            self.actions = a

    a = np.random.default_rng(0).normal(size=(500, 7))
    st = action_stats_from_episodes([E(a[:200]), E(a[200:])])
    np.testing.assert_allclose(st["q01"], np.quantile(a, 0.01, axis=0), rtol=1e-5)
