"""GRPO: hand-computed advantages and loss, dynamic sampling, clip counts, exact ratio 1, a real update."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from wmpo.models.protocol import Policy
from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import assemble_batch, dynamic_sampling_filter, group_advantages
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer, executed_token_mask, grpo_loss
from wmpo.utils.frames import uint8_to_model


class TinyPolicy(nn.Module):
    """A real (tiny) Policy: conv encoder + instruction embedding + one 256-bin head per token."""

    def __init__(self, chunk_len: int = 2, action_dim: int = 3, num_bins: int = 256, width: int = 16, vocab: int = 64):
        super().__init__()
        self.chunk_len, self.action_dim, self.num_bins = chunk_len, action_dim, num_bins
        self.vocab = vocab
        self.conv = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU()
        )
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(2 * width, chunk_len * action_dim * num_bins)

    def encode_instructions(self, instructions, device=None):
        L = 8
        out = torch.zeros(len(instructions), L, dtype=torch.int64)
        for i, s in enumerate(instructions):
            ids = [(ord(c) % (self.vocab - 1)) + 1 for c in s[:L]]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out.to(device) if device is not None else out

    def action_logits(self, frames, instr):
        h = self.conv(frames).mean((2, 3))
        e = self.embed(instr).mean(1)
        return self.head(torch.cat([h, e], 1)).view(-1, self.chunk_len, self.action_dim, self.num_bins)

    def log_prob(self, frames, instr, tokens, temperature: float = 1.0):
        logits = self.action_logits(frames, instr).float() / temperature
        lp = torch.log_softmax(logits, -1)
        logp = lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        ent = -(lp.exp() * lp).sum(-1)
        return logp, ent

    @torch.no_grad()
    def sample(self, frames, instr, temperature):
        logits = self.action_logits(frames, instr).float()
        if not temperature:
            tok = logits.argmax(-1)
            return tok, torch.log_softmax(logits, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        lp = torch.log_softmax(logits / temperature, -1)
        tok = torch.distributions.Categorical(logits=lp).sample()
        return tok, lp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)


def make_batch(policy, success, group, S=3, H=16, lengths=None, seed=0, temperature=1.6) -> TrajectoryBatch:
    """Trajectories sampled by `policy` from random frames; chunk_mask from `lengths` (chunks)."""
    g = torch.Generator().manual_seed(seed)
    N = len(success)
    obs = torch.randint(0, 256, (N, S, H, H, 3), generator=g, dtype=torch.uint8)
    instr = policy.encode_instructions(["pick the nut"] * N)
    lengths = torch.full((N,), S) if lengths is None else torch.as_tensor(lengths)
    mask = torch.arange(S)[None] < lengths[:, None]
    toks, logps = [], []
    torch.manual_seed(seed)
    for s in range(S):
        t, lp = policy.sample(uint8_to_model(obs[:, s]), instr, temperature)
        toks.append(t)
        logps.append(lp)
    return TrajectoryBatch(
        obs=obs,
        instr=instr,
        tokens=torch.stack(toks, 1),
        old_logp=torch.stack(logps, 1),
        chunk_mask=mask,
        success=torch.as_tensor(success, dtype=torch.bool),
        group=torch.as_tensor(group, dtype=torch.int64),
        length=lengths * policy.chunk_len,
    )


def test_tiny_policy_implements_protocol():
    assert isinstance(TinyPolicy(), Policy)


# ---------------------------------------------------------------------------------------------
# hand-computed math


def test_group_advantages_hand_computed():
    success = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    group = torch.tensor([7, 7, 7, 7, 3, 3, 3, 3, 5, 5])
    A = group_advantages(success, group, eps=0.0)
    # group 7: R = 1,0,0,0: mean .25, population std sqrt(.1875)
    s7 = math.sqrt(0.1875)
    exp7 = [0.75 / s7, -0.25 / s7, -0.25 / s7, -0.25 / s7]
    assert torch.allclose(A[:4], torch.tensor(exp7), atol=1e-6)
    # group 3: all success -> 0 (0/(0+eps) with eps=0 would be nan; eps>0 gives 0)
    A_eps = group_advantages(success, group, eps=1e-6)
    assert torch.equal(A_eps[4:8], torch.zeros(4))
    # group 5: R = 0,1: mean .5, std .5 -> -1, +1 (eps 1e-6 shifts it slightly)
    assert torch.allclose(A_eps[8:], torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert A_eps[8] > -1.0 and A_eps[9] < 1.0  # std + eps in the denominator
    assert torch.allclose(A_eps[:4], torch.tensor(exp7), atol=1e-5)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="group"):
        group_advantages(torch.zeros(4, dtype=torch.bool), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="group"):
        group_advantages(torch.zeros(4, dtype=torch.bool), torch.zeros(4))


def test_dynamic_sampling_filter():
    success = torch.tensor([1, 1, 0, 0, 0, 0, 1, 0], dtype=torch.bool)
    group = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    keep = dynamic_sampling_filter(success, group)
    assert keep.tolist() == [False, False, False, False, True, True, True, True]


def test_grpo_loss_hand_computed():
    # one trajectory with A = +1 and one with A = -1, two tokens each
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.5, 1.1], [0.5, 0.9]]))
    adv = torch.tensor([1.0, -1.0])
    loss, st = grpo_loss(new, old, adv, clip_low=0.2, clip_high=0.28)
    # tokens: r=1.5,A=+1 -> min(1.5, 1.28)=1.28 (clipped); r=1.1 -> 1.1;
    #         r=0.5,A=-1 -> min(-0.5, -0.8) = -0.8 (clipped); r=0.9 -> -0.9
    expected = -(1.28 + 1.1 - 0.8 - 0.9) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert st["clip_frac"] == pytest.approx(0.5)
    assert st["clip_frac_high"] == pytest.approx(0.25) and st["clip_frac_low"] == pytest.approx(0.25)
    assert st["ratio_mean"] == pytest.approx((1.5 + 1.1 + 0.5 + 0.9) / 4)
    # clipping on the other side is not active: r=1.5 with A<0 keeps the unclipped -1.5
    loss2, st2 = grpo_loss(new, old, -adv, clip_low=0.2, clip_high=0.28)
    expected2 = -(-1.5 - 1.1 + 0.5 + 0.9) / 4
    assert loss2.item() == pytest.approx(expected2, abs=1e-6)
    assert st2["clip_frac"] == 0.0


def test_grpo_loss_mask_and_gradient():
    old = torch.zeros(2, 3)
    new = torch.tensor([[0.1, 0.0, 5.0], [0.0, -0.05, 9.0]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss, st = grpo_loss(new, old, adv, mask, 0.2, 0.28)
    r = torch.exp(torch.tensor([0.1, 0.0, 0.0, -0.05]))
    expected = -(2 * r[0] + 2 * r[1] - r[2] - r[3]) / 4
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    assert new.grad[:, 2].abs().sum() == 0  # masked tokens get no gradient
    # d(-r*A/4)/dlogp = -A*r/4
    assert new.grad[0, 0].item() == pytest.approx(-2 * r[0].item() / 4, abs=1e-6)
    assert st["ratio_max"] == pytest.approx(math.exp(0.1), abs=1e-6)


def test_executed_token_mask_hand_computed():
    # K = 2; chunk s holds steps 2s, 2s+1; a trajectory of length L ran steps 0 .. L-1
    length = torch.tensor([5, 4, 8, 5])
    steps = torch.tensor([2, 1, 3, 3])
    m = executed_token_mask(length, steps, 2)
    assert m.tolist() == [[True, False], [True, True], [True, True], [False, False]]
    with pytest.raises(ValueError, match="steps"):
        executed_token_mask(length, steps[:2], 2)


def test_grpo_loss_drops_tokens_after_the_success_step():
    # one chunk of K=4 steps (D=1); the task is solved by step 1, so steps 2, 3 never ran
    old = torch.zeros(1, 4, 1)
    new = torch.log(torch.tensor([1.1, 0.9, 3.0, 0.1])).view(1, 4, 1).requires_grad_(True)
    adv = torch.tensor([1.0])
    keep = executed_token_mask(torch.tensor([2]), torch.tensor([0]), 4)[:, :, None]
    loss, st = grpo_loss(new, old, adv, keep, 0.2, 0.28)
    # token-mean over the 2 kept tokens only: -(1.1 + 0.9) / 2
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    assert st["num_ratios"] == 2 and st["ratio_max"] == pytest.approx(1.1) and st["clip_frac"] == 0.0
    loss.backward()
    assert new.grad[0, 2:].abs().sum() == 0 and (new.grad[0, :2] != 0).all()
    # without the mask the never-run step 2 (ratio 3, clipped at 1.28) would dilute and shift the loss
    full, _ = grpo_loss(new.detach(), old, adv, None, 0.2, 0.28)
    assert full.item() == pytest.approx(-(1.1 + 0.9 + 1.28 + 0.1) / 4, abs=1e-6)
    # chunk ratio: exp(sum of the kept tokens' log-ratios) = 1.1 * 0.9
    chunk, st = grpo_loss(new.detach(), old, adv, keep, 0.2, 0.28, ratio_level="chunk")
    assert chunk.item() == pytest.approx(-0.99, abs=1e-6) and st["num_ratios"] == 1


def test_grpo_config_validation():
    with pytest.raises(ValueError, match="minibatch_size"):
        GRPOConfig(batch_size=64, minibatch_size=128)
    cfg = GRPOConfig()
    assert (cfg.batch_size, cfg.minibatch_size, cfg.group_size) == (512, 128, 8)
    assert (cfg.clip_low, cfg.clip_high, cfg.temperature, cfg.lr) == (0.2, 0.28, 1.6, 5e-6)


# ---------------------------------------------------------------------------------------------
# batch assembly


def test_assemble_batch_drops_uniform_groups_and_refills():
    torch.manual_seed(0)
    pol = TinyPolicy()
    # round 1: group 0 all fail, group 1 mixed; round 2 (refill): group 0 mixed, group 1 all success
    r1 = make_batch(pol, [0, 0, 1, 0], [0, 0, 1, 1], seed=1)
    r2 = make_batch(pol, [1, 0, 1, 1], [0, 0, 1, 1], seed=2)
    batch, counts = assemble_batch([r1], batch_size=4)
    assert len(batch) == 2 and counts["groups_dropped"] == 1  # not full yet: the engine refills
    batch, counts = assemble_batch([r1, r2], batch_size=4)
    assert counts == {"groups": 4, "groups_dropped": 2, "trajectories": 4}
    assert batch.success.tolist() == [True, False, True, False]
    assert torch.equal(batch.obs[:2], r1.obs[2:]) and torch.equal(batch.obs[2:], r2.obs[:2])
    assert batch.group.tolist() == [1, 1, 2, 2]  # renumbered, unique across rounds
    assert torch.allclose(batch.advantage, torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5)
    nothing, c = assemble_batch([r1.index(slice(0, 2))])
    assert nothing is None and c["trajectories"] == 0


# ---------------------------------------------------------------------------------------------
# trainer on a real tiny policy


def _cfg(**kw):
    base = dict(batch_size=8, minibatch_size=4, micro_batch_chunks=5, lr=1e-3, epochs=1)
    base.update(kw)
    return GRPOConfig(**base)


def test_first_minibatch_ratio_is_exactly_one():
    torch.manual_seed(0)
    pol = TinyPolicy()
    batch = make_batch(pol, [1, 0, 0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1], lengths=[3, 2, 1, 3, 3, 2, 2, 1])
    batch.old_logp += 0.3  # stale log-probs from the sampler must be replaced
    tr = GRPOTrainer(pol, _cfg())
    stats = tr.update(batch)
    first, second = tr.minibatch_stats
    assert first["grpo/ratio_mean"] == 1.0 and first["grpo/ratio_max"] == 1.0 and first["grpo/ratio_min"] == 1.0
    assert first["grpo/clip_frac"] == 0.0 and first["grpo/approx_kl"] == 0.0
    assert second["grpo/ratio_mean"] != 1.0  # parameters moved after the first step
    for k in GRPOTrainer.STAT_KEYS:
        assert k in stats and math.isfinite(stats[k])
    assert tr.step == 2 and stats["grpo/optimizer_steps"] == 2


def test_update_increases_logp_of_positive_advantage_chunks():
    torch.manual_seed(0)
    pol = TinyPolicy()
    success = [1, 0, 0, 0, 1, 1, 0, 0]
    batch = make_batch(pol, success, [0, 0, 0, 0, 1, 1, 1, 1], lengths=[3, 3, 2, 3, 1, 3, 2, 3])
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    tr = GRPOTrainer(pol, _cfg(lr=3e-3, minibatch_size=8, micro_batch_chunks=4))
    tr.recompute_old_logp(batch)
    old = (batch.old_logp * batch.chunk_mask[..., None, None]).sum((2, 3))  # [N, S] chunk log-probs
    tr.update(batch)
    assert any(not torch.equal(before[k], v) for k, v in pol.state_dict().items())
    tr.recompute_old_logp(batch)
    new = (batch.old_logp * batch.chunk_mask[..., None, None]).sum((2, 3))
    delta = (new - old)[batch.chunk_mask]
    pos = torch.as_tensor(success, dtype=torch.bool)[:, None].expand_as(batch.chunk_mask)[batch.chunk_mask]
    assert delta[pos].mean() > 0 > delta[~pos].mean()


def test_micro_batching_matches_whole_minibatch_gradient():
    """Gradient accumulation over micro-batches gives the whole-mini-batch token-mean gradient."""
    torch.manual_seed(0)
    base = TinyPolicy()
    batch = make_batch(base, [1, 0, 1, 0], [0, 0, 1, 1], lengths=[3, 1, 2, 3])
    grads = []
    for micro in (100, 3, 1):
        pol = TinyPolicy()
        pol.load_state_dict(base.state_dict())
        tr = GRPOTrainer(pol, _cfg(batch_size=4, minibatch_size=4, micro_batch_chunks=micro, lr=0.0))
        tr.update(batch.index(slice(None)))
        grads.append(torch.cat([p.grad.flatten() for p in pol.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert torch.allclose(grads[0], grads[2], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def _direct_grpo_loss(pol, batch, temperature=1.6):
    """grpo_loss over every valid chunk of the batch in one graph (the tested loss, written out)."""
    rows, steps = batch.chunk_mask.nonzero(as_tuple=True)
    logp, _ = pol.log_prob(uint8_to_model(batch.obs[rows, steps]), batch.instr[rows], batch.tokens[rows, steps], temperature)
    keep = executed_token_mask(batch.length[rows], steps, pol.chunk_len)[:, :, None]
    return grpo_loss(logp.float(), batch.old_logp[rows, steps], batch.advantage[rows], keep, 0.2, 0.28)[0]


def test_update_trains_grpo_loss_and_ignores_actions_after_success():
    """The trainer's gradient is that of grpo_loss with the executed-steps mask; tokens after a success
    step (mid-chunk) get zero weight and do not count in the token mean."""
    torch.manual_seed(0)
    base = TinyPolicy()  # K = 2, D = 3
    batch = make_batch(base, [1, 0, 1, 0], [0, 0, 1, 1], lengths=[3, 2, 2, 3])
    batch.length = torch.tensor([5, 4, 3, 6])  # successes solved at steps 4 and 2: mid-chunk
    grads, losses = [], []
    for variant in ("as sampled", "other tokens after success"):
        b = batch.index(slice(None))
        if variant != "as sampled":  # actions that never ran: whatever they were, nothing changes
            b.tokens = b.tokens.clone()
            b.tokens[0, 2, 1] = (b.tokens[0, 2, 1] + 7) % 256
            b.tokens[2, 1, 1] = (b.tokens[2, 1, 1] + 100) % 256
        pol = TinyPolicy()
        pol.load_state_dict(base.state_dict())
        tr = GRPOTrainer(pol, _cfg(batch_size=4, minibatch_size=4, micro_batch_chunks=3, lr=0.0, max_grad_norm=0.0))
        st = tr.update(b)
        grads.append(torch.cat([p.grad.flatten() for p in pol.parameters()]))
        losses.append(st["grpo/loss"])
        # the same mini-batch through grpo_loss directly, one graph
        ref = TinyPolicy()
        ref.load_state_dict(base.state_dict())
        direct = _direct_grpo_loss(ref, b)
        direct.backward()
        want = torch.cat([p.grad.flatten() for p in ref.parameters()])
        torch.testing.assert_close(grads[-1], want, atol=1e-6, rtol=1e-4)
        assert st["grpo/loss"] == pytest.approx(direct.item(), abs=1e-6)
    assert torch.equal(grads[0], grads[1]) and losses[0] == losses[1]
    # ratio 1 at theta_old: the loss is -(sum_i A_i * kept steps_i) / (sum_i kept steps_i), kept = length
    A = b.advantage
    assert losses[0] == pytest.approx(-(A * batch.length).sum().item() / batch.length.sum().item(), abs=1e-5)
    # traj_mean: each trajectory's kept tokens averaged, then trajectories: -mean_i A_i
    tr = GRPOTrainer(TinyPolicy(), _cfg(batch_size=4, minibatch_size=4, micro_batch_chunks=3, lr=0.0, loss_agg="traj_mean"))
    st = tr.update(batch.index(slice(None)))
    assert st["grpo/loss"] == pytest.approx(-A.mean().item(), abs=1e-5)


def test_chunk_ratio_and_traj_mean_options_run():
    torch.manual_seed(0)
    pol = TinyPolicy()
    batch = make_batch(pol, [1, 0, 1, 0], [0, 0, 1, 1], lengths=[3, 1, 2, 3])
    tr = GRPOTrainer(pol, _cfg(batch_size=4, minibatch_size=2, ratio_level="chunk", loss_agg="traj_mean"))
    st = tr.update(batch)
    assert tr.minibatch_stats[0]["grpo/ratio_mean"] == 1.0
    assert math.isfinite(st["grpo/loss"])


def test_trainer_rejects_bad_batch():
    pol = TinyPolicy()
    batch = make_batch(pol, [1, 0], [0, 0])
    batch.tokens = batch.tokens[:, :, :1]
    with pytest.raises(ValueError, match="batch.tokens"):
        GRPOTrainer(pol, _cfg(batch_size=2, minibatch_size=2)).update(batch)


def test_trainer_state_dict_resume_is_exact():
    torch.manual_seed(0)
    pol = TinyPolicy()
    b1 = make_batch(pol, [1, 0, 1, 0], [0, 0, 1, 1], seed=1)
    b2 = make_batch(pol, [0, 1, 1, 0], [0, 0, 1, 1], seed=2)
    cfg = _cfg(batch_size=4, minibatch_size=2)
    tr = GRPOTrainer(pol, cfg)
    tr.update(b1.index(slice(None)))
    state = copy.deepcopy(tr.state_dict())
    tr.update(b2.index(slice(None)))
    pol2 = TinyPolicy()
    tr2 = GRPOTrainer(pol2, cfg)
    tr2.load_state_dict(state)
    tr2.update(b2.index(slice(None)))
    assert tr2.step == tr.step == 4
    for a, b in zip(pol.parameters(), pol2.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# the built-in VLA policy


def tiny_vla(action_dim: int = 3):
    vla = pytest.importorskip("wmpo.models.policy")
    cfg = vla.PolicyConfig(chunk_len=2, action_dim=action_dim, image_size=32, patch_size=16, hidden_size=32, num_heads=2,
                           vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=64)
    return vla.VLAPolicy(cfg)


def test_vla_policy_exact_ratio_and_positive_chunks_gain():
    torch.manual_seed(0)
    pol = tiny_vla()
    assert isinstance(pol, Policy)
    success = [1, 0, 0, 0, 1, 1, 0, 0]
    batch = make_batch(pol, success, [0, 0, 0, 0, 1, 1, 1, 1], lengths=[3, 3, 2, 3, 1, 3, 2, 3])
    tr = GRPOTrainer(pol, _cfg(lr=1e-3, minibatch_size=4, micro_batch_chunks=5))
    tr.recompute_old_logp(batch)
    old = batch.old_logp.clone()
    stats = tr.update(batch)
    assert tr.minibatch_stats[0]["grpo/ratio_mean"] == 1.0 and tr.minibatch_stats[0]["grpo/ratio_max"] == 1.0
    assert all(math.isfinite(stats[k]) for k in GRPOTrainer.STAT_KEYS)
    tr.recompute_old_logp(batch)
    delta = (batch.old_logp - old).sum((2, 3))[batch.chunk_mask]
    pos = torch.as_tensor(success, dtype=torch.bool)[:, None].expand_as(batch.chunk_mask)[batch.chunk_mask]
    assert delta[pos].mean() > 0 > delta[~pos].mean()
