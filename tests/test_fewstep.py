"""The few-step world model: the step-conditioned (shortcut) student, its exact context cache, the
sampler contract at every step count, the fused few-step path against the reference loop, and the
distillation step / trainer (wmpo.train.distill) on micro models."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from wmpo import ops
from wmpo.diffusion import FlowMatchEulerSampler, fused_euler_sample_cached
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.train.distill import DistillConfig, distill_loss, distill_world_model, student_from_teacher

CFG = WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                       num_context=2, chunk_len=3, action_dim=7, freq_dim=16, t_context=0.05)
STATS = {"q01": np.full(7, -1.0), "q99": np.full(7, 1.0)}


def _teacher(seed=0) -> WorldModel:
    """A micro teacher with every weight random (a trained-looking, non-zero velocity field)."""
    torch.manual_seed(seed)
    m = WorldModel(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.15)
    m.set_action_stats(STATS)
    return m.eval()


def _student(seed=1) -> WorldModel:
    """A step-conditioned student whose step-size embedding is non-zero (so d matters)."""
    s = student_from_teacher(_teacher())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.d_mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return s.eval()


def _inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, K = CFG.num_context, CFG.chunk_len
    return (torch.randn(B, c, 4, 8, 8, generator=g), torch.randn(B, c, 7, generator=g), torch.randn(B, K, 7, generator=g),
            torch.randn(B, K, 4, 8, 8, generator=g))


def test_student_starts_as_the_teacher_at_every_step_size():
    t = _teacher()
    s = student_from_teacher(t).eval()
    assert s.cfg.step_conditioned and s.action_stats is not None
    ctx, ca, a, x = _inputs()
    full = torch.cat([ctx, x], 1)
    acts = torch.cat([ca, a], 1)
    tf = torch.rand(2, 5)
    with torch.no_grad():
        want = t(full, tf, acts)
        for d in (None, 0.0, 0.25, 1.0):
            assert torch.equal(s(full, tf, acts, step_size=d), want)
    with pytest.raises(ValueError, match="teacher"):
        student_from_teacher(s)


def test_step_size_changes_the_student_and_the_cache_stays_exact():
    s = _student()
    ctx, ca, a, x = _inputs()
    full, acts = torch.cat([ctx, x], 1), torch.cat([ca, a], 1)
    c = CFG.num_context
    with torch.no_grad():
        outs = []
        for d in (0.0, 0.5, 1.0):
            tf = torch.cat([torch.full((2, c), 0.05), torch.full((2, 3), 0.7)], 1)
            step = torch.cat([torch.zeros(2, c), torch.full((2, 3), d)], 1)
            un = s(full, tf, acts, step_size=step)[:, c:]
            cache = s.build_context_cache(ctx, ca, 0.05)
            cached = s.forward_cached(x, tf[:, c:], a, cache, step_size=d)
            torch.testing.assert_close(cached, un, atol=1e-5, rtol=1e-5)
            outs.append(cached)
        assert (outs[0] - outs[2]).abs().max() > 1e-3  # the step size is read


def test_step_modulation_is_every_steps_modulation_at_once():
    s = _student()
    _, _, a, _ = _inputs()
    ts = torch.tensor([1.0, 0.6, 0.25, 0.0])
    with torch.no_grad():
        mods = s.step_modulation(ts, a)
        assert mods.shape == (3, 2 * 3, s.modulation.out_features)
        for i in range(3):
            want = s._modulation(ts[i].expand(2, 3), a, torch.float32, (ts[i] - ts[i + 1]).expand(2, 3))
            torch.testing.assert_close(mods[i], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 30])
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_sampler_contract_at_every_step_count(steps, kind):
    """The WorldModelEnv (what the rollout engine steps) at any step count: the fused few-step path, the
    cached sampler loop and the uncached sampler loop agree, for a plain model and a step-conditioned one."""
    from wmpo.rollout.world_model_env import WorldModelEnv

    class IdentityVAE:  # the latents are the "frames": the test is the sampler, not the decoder
        def encode(self, x, max_batch=None):
            return torch.cat([x, x[:, :1]], 1)  # [B, 3, 8, 8] -> 4 latent channels

        def decode(self, z, max_batch=None):
            return z

    model = _teacher() if kind == "teacher" else _student()
    first = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    acts = torch.rand(2, 3, 7) * 2 - 1
    outs = {}
    for name, kw in {"fused": dict(use_cache=True, fused_max_steps=64), "cached": dict(use_cache=True, fused_max_steps=0),
                     "uncached": dict(use_cache=False)}.items():
        env = WorldModelEnv(IdentityVAE(), model, steps=steps, generator=torch.Generator().manual_seed(7), **kw)
        env.reset(first)
        outs[name] = torch.stack([env.step(acts, decode=False) for _ in range(2)])  # two chunks: the context advances
    assert outs["cached"].shape == (2, 2, 3, 4, 8, 8) and torch.isfinite(outs["cached"]).all()
    torch.testing.assert_close(outs["fused"], outs["cached"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["uncached"], outs["cached"], atol=1e-4, rtol=1e-4)
    sampler = FlowMatchEulerSampler()
    sampler.set_timesteps(steps)
    assert abs(sum(float(sampler.step_size(i)) for i in range(len(sampler))) - 1.0) < 1e-6


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_fused_path_against_the_reference_loop(backend):
    """fused_euler_sample_cached (all-step modulation + fused update) == the plain sampler loop over
    forward_cached with the reference ops."""
    s = _student()
    ctx, ca, a, x = _inputs(B=3, seed=4)
    ts = torch.tensor([1.0, 0.5, 0.25, 0.0])
    with torch.no_grad():
        with ops.reference_ops():
            cache = s.build_context_cache(ctx, ca[:3], 0.05)
            ref = x.clone()
            sampler = FlowMatchEulerSampler()
            sampler.set_timesteps(ts)
            for i in range(3):
                v = s.forward_cached(ref, ts[i].expand(3, 3), a, cache, step_size=sampler.step_size(i))
                ref = sampler.step(v, i, ref)
        import os

        old = os.environ.get("WMPO_BACKEND")
        os.environ["WMPO_BACKEND"] = backend
        try:
            cache = s.build_context_cache(ctx, ca, 0.05)
            got = fused_euler_sample_cached(s, x.clone(), ts, a, cache)
        finally:
            if old is None:
                os.environ.pop("WMPO_BACKEND")
            else:
                os.environ["WMPO_BACKEND"] = old
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _windows(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = CFG.num_context + CFG.chunk_len
    return torch.randn(n, T, 4, 8, 8, generator=g), torch.rand(n, T, 7, generator=g) * 2 - 1


def _one_step_gap(student, teacher, x0, act, n_teacher=4):
    """Mean squared gap between the student's 1-step sample and the teacher's n-step sample (same noise)."""
    c = CFG.num_context
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(x0[:, c:].shape, generator=g)
    with torch.no_grad():
        outs = []
        for m, n in ((student, 1), (teacher, n_teacher)):
            cache = m.build_context_cache(x0[:, :c], act[:, :c], 0.05)
            outs.append(fused_euler_sample_cached(m, noise.clone(), torch.linspace(1, 0, n + 1), act[:, c:], cache))
    return float((outs[0] - outs[1]).pow(2).mean())


def test_distillation_steps_lower_the_loss_and_move_the_student_toward_the_teacher():
    teacher = _teacher().requires_grad_(False)
    student = student_from_teacher(teacher).train()
    cfg = DistillConfig(base_steps=2, batch_size=4, velocity_fraction=0.25)
    x0, act = _windows()
    gap0 = _one_step_gap(student.eval(), teacher, x0, act)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first, last = {}, {}
    for it in range(60):
        level = it % 2  # d = 1 (bootstrapped from the student's halves) and d = 1/2 (the teacher's halves)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(100 + it % 4))
        student.train()
        loss, parts = distill_loss(student, teacher, x0, act, cfg, noise, level)
        opt.zero_grad()
        loss.backward()
        opt.step()
        (first if it < 2 else last)[level] = float(loss.detach())
    gap1 = _one_step_gap(student.eval(), teacher, x0, act)
    assert set(parts) == {"velocity", "shortcut"}
    assert last[1] < 0.5 * first[1]  # the teacher-target level
    assert gap1 < 0.7 * gap0, (gap0, gap1)  # its 1-step sample is closer to the teacher's 4-step sample


def test_distill_world_model_writes_a_loadable_student_and_resumes_exactly(tmp_path):
    from wmpo.data.clips import synthetic_episodes
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.utils.checkpoint import save_checkpoint

    vae = FrameVAE(VAEConfig(frame_size=32, latent_channels=4, block_channels=(8, 8, 8), layers_per_block=1, norm_groups=4,
                             mid_attention=False))
    teacher = _teacher()
    save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state()})
    eps = synthetic_episodes(3, 12, size=32)
    cfg = lambda steps: DistillConfig(steps=steps, batch_size=2, base_steps=4, log_every=1, ckpt_every=100)  # noqa: E731
    kw = dict(vae=vae, device="cpu", episodes=eps)
    a = distill_world_model(cfg(2), tmp_path / "teacher.pt", [], tmp_path / "a", **kw)
    assert a["step"] == 2 and (tmp_path / "a" / "train_state.pt").is_file()
    a = distill_world_model(cfg(4), tmp_path / "teacher.pt", [], tmp_path / "a", **kw)  # resumes at 2
    b = distill_world_model(cfg(4), tmp_path / "teacher.pt", [], tmp_path / "b", **kw)  # straight to 4
    assert a["step"] == b["step"] == 4
    sa, sb = WorldModel.from_checkpoint(a["path"]), WorldModel.from_checkpoint(b["path"])
    assert sa.cfg.step_conditioned and sa.action_stats is not None
    for (k, pa), pb in zip(sa.state_dict().items(), sb.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert not torch.equal(sa.state_dict()["d_mlp.2.weight"], torch.zeros_like(sa.state_dict()["d_mlp.2.weight"]))


def test_distill_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="base_steps"):
        DistillConfig(base_steps=6).check()
    with pytest.raises(ValueError, match="velocity_fraction"):
        DistillConfig(velocity_fraction=1.0).check()
    from wmpo.cli import main

    rc = main(["distill-wm", "--teacher", str(tmp_path / "none.pt"), "--data", str(tmp_path / "x.h5"), "--vae",
               str(tmp_path / "v.pt"), "--out", str(tmp_path / "o"), "--preset", "micro"])
    assert rc == 2 and "error: --" in capsys.readouterr().err  # one line naming the flag
