"""DPO: hand-computed loss, preference pairs, exact two-pass gradient, and a real optimization."""
from __future__ import annotations

import math

import pytest
import torch

from test_grpo import TinyPolicy, make_batch
from wmpo.rl.dpo import DPOConfig, DPOTrainer, build_preference_pairs, dpo_loss


def test_dpo_loss_hand_computed():
    lw = torch.tensor([-10.0, -20.0])
    ll = torch.tensor([-12.0, -18.0])
    rw = torch.tensor([-11.0, -20.0])
    rl = torch.tensor([-11.0, -19.0])
    beta = 0.5
    # pair 0: ((-10+11) - (-12+11)) = 2 -> -log sigmoid(1); pair 1: (0 - 1) = -1 -> -log sigmoid(-0.5)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    loss, st = dpo_loss(lw, ll, rw, rl, beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert st["reward_accuracy"] == 0.5
    assert st["reward_margin"] == pytest.approx((1.0 - 0.5) / 2)
    with pytest.raises(ValueError, match="ref_l"):
        dpo_loss(lw, ll, rw, rl[:1], beta)


def test_preference_pairs_same_state_then_across():
    success = torch.tensor([1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    pairs = build_preference_pairs(success, group, cross_group=False)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2)]
    pairs = build_preference_pairs(success, group, cross_group=True)
    within, across = pairs[:2], pairs[2:]
    assert sorted(map(tuple, within.tolist())) == [(0, 1), (0, 2)]
    # leftovers: successes {3, 4} (group 1 all success) x failures {5, 6} (group 2 all failure)
    assert len(across) == 2
    assert sorted(across[:, 0].tolist()) == [3, 4] and sorted(across[:, 1].tolist()) == [5, 6]
    assert bool(success[pairs[:, 0]].all()) and not bool(success[pairs[:, 1]].any())
    assert len(build_preference_pairs(success, group, max_pairs=1)) == 1
    assert len(build_preference_pairs(torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.int64))) == 0


def test_two_pass_gradient_equals_direct_gradient():
    torch.manual_seed(0)
    pol = TinyPolicy()
    batch = make_batch(pol, [1, 0, 1, 0], [0, 0, 1, 1], lengths=[3, 2, 1, 3], temperature=1.0)
    cfg = DPOConfig(beta=0.3, lr=0.0, micro_batch_chunks=2, max_grad_norm=0.0)
    tr = DPOTrainer(pol, cfg)
    with torch.no_grad():  # make the reference differ from the policy
        for p in tr.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = torch.tensor([[0, 1], [2, 3]])
    ref = tr.trajectory_logp(tr.reference, batch)
    tr._step(batch, pairs, ref)
    two_pass = [p.grad.clone() for p in pol.parameters()]
    # direct: full graph over every chunk
    pol.zero_grad()
    rows, steps = batch.chunk_mask.nonzero(as_tuple=True)
    from wmpo.utils.frames import uint8_to_model

    lp, _ = pol.log_prob(uint8_to_model(batch.obs[rows, steps]), batch.instr[rows], batch.tokens[rows, steps], 1.0)
    traj = torch.zeros(4).index_add(0, rows, lp.sum((1, 2)))
    loss, _ = dpo_loss(traj[pairs[:, 0]], traj[pairs[:, 1]], ref[pairs[:, 0]], ref[pairs[:, 1]], 0.3)
    loss.backward()
    for a, p in zip(two_pass, pol.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


def test_dpo_fit_raises_preferred_margin():
    torch.manual_seed(0)
    pol = TinyPolicy()
    success = [1, 0, 0, 1, 1, 0, 1, 0]
    batch = make_batch(pol, success, [0, 0, 0, 0, 1, 1, 1, 1], lengths=[3, 2, 3, 1, 2, 3, 3, 2], temperature=1.0)
    tr = DPOTrainer(pol, DPOConfig(lr=2e-3, epochs=4, pairs_per_step=4, micro_batch_chunks=6))
    hist = tr.fit(batch)
    assert len(hist) == 8  # 2 wins x 2 losses per group x 2 groups = 8 pairs -> 2 steps x 4 epochs
    assert hist[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at start
    assert hist[-1]["dpo/loss"] < hist[0]["dpo/loss"]
    assert hist[-1]["dpo/reward_margin"] > 0
    # reference stays frozen
    assert all(not p.requires_grad for p in tr.reference.parameters())


def test_dpo_on_vla_policy_two_pass_matches_direct():
    from test_grpo import tiny_vla
    from wmpo.utils.frames import uint8_to_model

    torch.manual_seed(0)
    pol = tiny_vla()
    batch = make_batch(pol, [1, 0, 0, 1], [0, 0, 1, 1], lengths=[3, 2, 1, 3], temperature=1.0)
    tr = DPOTrainer(pol, DPOConfig(beta=0.2, lr=0.0, micro_batch_chunks=3, max_grad_norm=0.0))
    with torch.no_grad():
        for p in tr.reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pairs = build_preference_pairs(batch.success, batch.group)
    ref = tr.trajectory_logp(tr.reference, batch)
    st = tr._step(batch, pairs, ref)
    two_pass = [None if p.grad is None else p.grad.clone() for p in pol.parameters()]
    pol.zero_grad()
    rows, steps = batch.chunk_mask.nonzero(as_tuple=True)
    lp, _ = pol.log_prob(uint8_to_model(batch.obs[rows, steps]), batch.instr[rows], batch.tokens[rows, steps], 1.0)
    traj = torch.zeros(4).index_add(0, rows, lp.sum((1, 2)))
    loss, _ = dpo_loss(traj[pairs[:, 0]], traj[pairs[:, 1]], ref[pairs[:, 0]], ref[pairs[:, 1]], 0.2)
    assert st["dpo/loss"] == pytest.approx(loss.item(), abs=1e-5)
    loss.backward()
    for a, p in zip(two_pass, pol.parameters()):
        if a is None:
            assert p.grad is None or p.grad.abs().max() == 0
        else:
            assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-3)


def test_trajectory_logp_counts_only_the_actions_that_ran():
    """A success mid-chunk (and the padding of a last partial chunk): the never-run actions carry no likelihood."""
    from wmpo.rl.grpo import executed_token_mask
    from wmpo.utils.frames import uint8_to_model

    torch.manual_seed(0)
    pol = TinyPolicy()  # K = 2
    batch = make_batch(pol, [1, 0, 1], [0, 0, 0], lengths=[3, 2, 2], temperature=1.0)
    batch.length = torch.tensor([5, 4, 3])  # trajectory 0 solved at step 4 (chunk 2, step 0), 2 at step 2
    tr = DPOTrainer(pol, DPOConfig())
    got = tr.trajectory_logp(pol, batch)
    rows, steps = batch.chunk_mask.nonzero(as_tuple=True)
    with torch.no_grad():
        lp, _ = pol.log_prob(uint8_to_model(batch.obs[rows, steps]), batch.instr[rows], batch.tokens[rows, steps], 1.0)
    keep = executed_token_mask(batch.length[rows], steps, 2)[:, :, None]
    want = torch.zeros(3).index_add(0, rows, (lp * keep).sum((1, 2)))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, torch.zeros(3).index_add(0, rows, lp.sum((1, 2))))  # the unmasked sum differs
    # whatever was written for the never-run steps, the trajectory log-prob is the same
    other = batch.index(slice(None))
    other.tokens = batch.tokens.clone()
    other.tokens[0, 2, 1] = (other.tokens[0, 2, 1] + 5) % 256
    other.tokens[2, 1, 1] = (other.tokens[2, 1, 1] + 9) % 256
    torch.testing.assert_close(tr.trajectory_logp(pol, other), got)


def _solved_square_state(image_size):
    """A square state with the nut already around the peg: an episode from it is solved at its first step."""
    from wmpo.sim import make_env

    env = make_env("square", image_size=image_size)
    try:
        env.reset(3)
        raw = env.raw
        nut = next(n for n in raw.nuts if n.name == "SquareNut")
        adr = raw.sim.model.get_joint_qpos_addr(nut.joints[0])[0]
        peg = raw.sim.data.body_xpos[raw.peg1_body_id]
        raw.sim.data.qpos[adr : adr + 3] = [peg[0], peg[1], 0.83]
        raw.sim.forward()
        assert env.is_success()
        solved = env.get_state()
        env.reset(4)
        return env.get_state(), solved
    finally:
        env.close()


def test_base_rollout_groups_follow_the_start_not_the_store_order(tmp_path):
    """2 workers, unequal lengths: the store holds episodes in finishing order; DPO groups must come from
    the recorded start index (issue: store index // G mixed initial states)."""
    import numpy as np

    from wmpo.data.store import TrajectoryStore
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.data.batch import episodes_to_batch
    from wmpo.data.groups import groups_from_start_index
    from wmpo.sim.collect import collect

    G, size = 3, 32
    normal, solved = _solved_square_state(size)
    init = np.repeat(np.stack([normal, solved]), G, axis=0)  # starts 0-2: state A (runs 4 steps), 3-5: B (1 step)
    path = tmp_path / "base.h5"
    collect(lambda frames, instr: np.zeros((len(frames), 2, 7)), "square", path, init_states=init, num_workers=2,
            image_size=size, max_steps=4, show_progress=False)
    with TrajectoryStore(path) as store:
        eps = [store.load(i) for i in range(len(store))]
    starts = [ep.meta["start_index"] for ep in eps]
    assert sorted(starts) == list(range(6)) and starts != sorted(starts)  # finishing order is not start order
    for ep in eps:  # state A fails at the horizon, state B is solved by its first action (finish_step = T = 1)
        solved_start = ep.meta["start_index"] >= G
        assert ep.success == solved_start and len(ep) == (1 if solved_start else 4) and ep.finish_step == len(ep)
    groups = groups_from_start_index(eps, G)
    assert groups == [s // G for s in starts]
    assert groups != [i // G for i in range(len(eps))]  # what the store position said
    for g in set(groups):  # one group = one initial state
        assert len({eps[i].states[0].tobytes() for i in range(len(eps)) if groups[i] == g}) == 1
    # no "same-state" pair mixes states: every group here is uniform, so there is none
    tok = ActionTokenizer(-np.ones(7), np.ones(7))
    batch = episodes_to_batch(eps, tok, TinyPolicy(chunk_len=2, action_dim=7), groups)
    assert len(build_preference_pairs(batch.success, batch.group, cross_group=False)) == 0
    by_store_order = torch.tensor([i // G for i in range(len(eps))])
    assert len(build_preference_pairs(batch.success, by_store_order, cross_group=False)) > 0  # the old bug
    assert batch.length.tolist() == [len(ep) for ep in eps]
    eps[0].meta.pop("start_index")
    with pytest.raises(ValueError, match=r"episodes\[0\]: expected meta\['start_index'\]"):
        groups_from_start_index(eps, G)
