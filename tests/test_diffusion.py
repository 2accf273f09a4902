import pytest
import torch

from wmpo import ops
from wmpo.diffusion import as_step_list, ddim_sample, euler_sample, flow_step_list, step_tensor


def test_step_lists():
    assert flow_step_list(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    s = flow_step_list(10, shift=3.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and all(a > b for a, b in zip(s, s[1:]))
    assert s[5] > 0.5  # shift spends more steps near noise
    assert as_step_list([1.0, 0.3, 0.0]) == [1.0, 0.3, 0.0]
    with pytest.raises(ValueError, match="steps"):
        as_step_list([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="num_steps"):
        flow_step_list(0)
    assert step_tensor(2).tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("steps", [1, 4, 30])
def test_euler_exact_for_straight_paths(steps):
    """With the true velocity of a straight path (noise - x0) every step count lands exactly on x0."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 5, 4, generator=g)
    noise = torch.randn(3, 5, 4, generator=g)
    x = noise.clone()
    x[:, :2] = x0[:, :2]  # context frames stay
    out = euler_sample(lambda x, t: noise - x0, x, steps, num_context=2)
    assert out is x  # in place
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_noisy_context_noises_only_what_it_should():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 6, 3, generator=g)
    noise = torch.randn(2, 6, 3, generator=g)
    t = torch.tensor([0.3, 0.9])
    xt, tf = ops.noisy_context(x0, noise, t, num_context=2, t_context=0.05)
    torch.testing.assert_close(xt[:, :2], 0.95 * x0[:, :2] + 0.05 * noise[:, :2])
    torch.testing.assert_close(xt[0, 2:], 0.7 * x0[0, 2:] + 0.3 * noise[0, 2:])
    torch.testing.assert_close(tf[:, :2], torch.full((2, 2), 0.05))
    torch.testing.assert_close(tf[1, 2:], torch.full((4,), 0.9))


def test_ddim_recovers_x0_with_true_eps():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, generator=g)
    eps = torch.randn(2, 3, 4, generator=g)
    ac = torch.linspace(0.999, 0.01, 1000)
    x = ac[999].sqrt() * x0 + (1 - ac[999]).sqrt() * eps
    x[:, :1] = x0[:, :1]
    out = ddim_sample(lambda x, t: eps.expand_as(x), x, ac, [999, 500, 100, 0], num_context=1)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
