"""Online GRPO baseline: real rollouts in a vectorized env, budget accounting, updates."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from test_grpo import TinyPolicy
from wmpo.rl.grpo import GRPOConfig
from wmpo.models.tokenizer import ActionTokenizer
from wmpo.rl.online import OnlineGRPOConfig, rollout_groups, run_online_grpo


class ReachVecEnv:
    """A small real env with the VecEnv API: a point moved by actions[:, :2] must reach a target.

    State [px, py, tx, ty] in [-1, 1]; frames draw the point (red) and target (green) on 16x16.
    """

    made: list["ReachVecEnv"] = []

    def __init__(self, task: str, num_envs: int, image_size: int, seed: int, horizon: int = 12):
        self.n, self.size, self.horizon = num_envs, image_size, horizon
        self.state = np.zeros((num_envs, 4), np.float32)
        self.t = 0
        self.resets = 0
        ReachVecEnv.made.append(self)

    def _render(self) -> np.ndarray:
        img = np.zeros((self.n, self.size, self.size, 3), np.uint8)
        pix = np.clip(((self.state + 1) / 2 * (self.size - 1)).round().astype(int), 0, self.size - 1)
        ar = np.arange(self.n)
        img[ar, pix[:, 1], pix[:, 0], 0] = 255
        img[ar, pix[:, 3], pix[:, 2], 1] = 255
        return img

    def reset_to(self, states):
        states = np.asarray(states, np.float32)
        assert states.shape == (self.n, 4)
        self.state = states.copy()
        self.t = 0
        self.resets += 1
        return self._render()

    def step(self, actions):
        actions = np.asarray(actions, np.float32)
        assert actions.shape[0] == self.n
        self.state[:, :2] = np.clip(self.state[:, :2] + 0.25 * actions[:, :2], -1, 1)
        self.t += 1
        dist = np.linalg.norm(self.state[:, :2] - self.state[:, 2:], axis=1)
        succ = dist < 0.3
        rew = succ.astype(np.float32)
        dones = np.full(self.n, self.t >= self.horizon)
        return self._render(), rew, dones, succ


def _init_states(n, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.6, 0.6, (n, 4)).astype(np.float32)
    s[:, 2:] = s[:, :2] + rng.choice([-1, 1], (n, 2)) * 0.45  # target within a couple of steps
    return s


def test_rollout_groups_masks_and_success():
    torch.manual_seed(0)
    pol = TinyPolicy(chunk_len=2, action_dim=3)
    env = ReachVecEnv("reach", 8, 16, 0)
    starts = np.repeat(_init_states(2), 4, axis=0)
    dec = ActionTokenizer(-np.ones(3), np.ones(3))
    instr = pol.encode_instructions(["reach"] * 8)
    b = rollout_groups(pol, env, starts, instr, dec, max_chunks=6, temperature=1.6, group=torch.arange(2).repeat_interleave(4))
    S = b.obs.shape[1]
    assert b.obs.shape == (8, S, 16, 16, 3) and b.tokens.shape == (8, S, 2, 3)
    # a trajectory's valid chunks are a prefix; its length in steps matches them
    n_chunks = b.chunk_mask.sum(1)
    assert torch.equal(b.chunk_mask, torch.arange(S)[None] < n_chunks[:, None])
    assert ((b.length + 1) // 2 == n_chunks).all()
    assert (b.length[~b.success] == 12).all()  # failures run to the env horizon
    assert (b.length[b.success] < 12).all() or not b.success.any()
    # frame 0 of each trajectory is the reset frame: point and target drawn
    assert (b.obs[:, 0, ..., 0] == 255).any((1, 2)).all()
    # the env saw the tokenizer's decoded actions: replaying chunk 0 of trajectory 0 reproduces its frame 1
    if b.chunk_mask[0, 1]:
        env2 = ReachVecEnv("reach", 8, 16, 0)
        env2.reset_to(starts)
        acts = dec.decode(b.tokens[:, 0]).numpy()
        for k in range(2):
            fr = env2.step(acts[:, k])[0]
        assert np.array_equal(fr[0], b.obs[0, 1].numpy())
    # tokenizer_decoder with the tokenizer's own q01/q99 is its decode
    from wmpo.rl.online import tokenizer_decoder

    tok = ActionTokenizer(np.array([-2.0, 0.0, 1.0]), np.array([2.0, 1.0, 3.0]))
    t = torch.tensor([[[0, 255, 128]]])
    assert torch.allclose(tokenizer_decoder(tok, tok.q01, tok.q99)(t), tok.decode(t).float())
    assert torch.allclose(tokenizer_decoder(tok)(t), tok.decode(t).float())


def test_online_grpo_spends_budget_and_updates():
    torch.manual_seed(0)
    ReachVecEnv.made.clear()
    pol = TinyPolicy(chunk_len=2, action_dim=3)
    before = [p.detach().clone() for p in pol.parameters()]
    cfg = OnlineGRPOConfig(
        budget=40, num_envs=8, max_chunks=6, image_size=16, seed=0,
        grpo=GRPOConfig(group_size=4, batch_size=8, minibatch_size=4, lr=1e-3),
    )
    dec = ActionTokenizer(-np.ones(3), np.ones(3))
    out = run_online_grpo(pol, "reach", cfg, dec, "reach the green dot", make_env=ReachVecEnv, initial_states=_init_states(16))
    assert out["real_trajectories"] == 40  # 5 rounds of 8 envs
    assert sum(e.resets * e.n for e in ReachVecEnv.made) == 40
    assert out["updates"] >= 1 and out["updates"] == len(out["history"])
    # every batch is exactly B = 8 but the last (the budget ran out: updated on what was kept); one step per M = 4
    assert all(h["online/kept"] == 8 for h in out["history"][:-1]) and out["history"][-1]["online/kept"] in (4, 8)
    assert out["optimizer_steps"] == sum(int(h["online/kept"]) // 4 for h in out["history"])
    assert any(not torch.equal(a, p) for a, p in zip(before, pol.parameters()))
    assert all(np.isfinite(h["grpo/loss"]) for h in out["history"])


def test_online_grpo_budget_not_multiple_of_envs():
    ReachVecEnv.made.clear()
    pol = TinyPolicy(chunk_len=2, action_dim=3)
    cfg = OnlineGRPOConfig(budget=14, num_envs=8, max_chunks=3, image_size=16,
                           grpo=GRPOConfig(group_size=4, batch_size=8, minibatch_size=8))
    dec = ActionTokenizer(-np.ones(3), np.ones(3))
    out = run_online_grpo(pol, "reach", cfg, dec, "reach", make_env=ReachVecEnv, initial_states=_init_states(4))
    assert out["real_trajectories"] == 12  # 8 + 4: never exceeds P, whole groups only
    with pytest.raises(ValueError, match="num_envs"):
        run_online_grpo(pol, "reach", OnlineGRPOConfig(num_envs=6, grpo=GRPOConfig(group_size=4, batch_size=8, minibatch_size=8)),
                        dec, "reach", make_env=ReachVecEnv, initial_states=_init_states(4))


class TaskEnvList:
    """VecEnv API over a list of real wmpo.sim TaskEnvs (used until wmpo.sim.vec_env lands)."""

    def __init__(self, task, num_envs, image_size, seed):
        from wmpo.sim.env import make_env

        self.envs = [make_env(task, image_size=image_size, seed=seed + i) for i in range(num_envs)]

    def reset_to(self, states):
        return np.stack([e.reset_to(s) for e, s in zip(self.envs, np.asarray(states))])

    def step(self, actions):
        outs = [e.step(a) for e, a in zip(self.envs, np.asarray(actions, np.float64))]
        return (np.stack([o[0] for o in outs]), np.array([o[1] for o in outs]), np.array([o[2] for o in outs]),
                np.array([o[3]["success"] for o in outs]))

    def close(self):
        for e in self.envs:
            e.close()


def test_online_grpo_real_simulator_smoke():
    """A few real robosuite steps with the built-in VLA policy and tokenizer, then one GRPO update."""
    pytest.importorskip("wmpo.sim.env")
    from test_grpo import tiny_vla

    if importlib.util.find_spec("wmpo.sim.vec_env") is not None:
        from wmpo.sim.vec_env import VecEnv as make_env
    else:
        make_env = TaskEnvList
    if importlib.util.find_spec("wmpo.sim.initial_states") is not None:
        from wmpo.sim.initial_states import get_initial_states

        states = get_initial_states("square", "train", 1)
    else:
        from wmpo.sim.env import make_env as make_one

        e = make_one("square", image_size=0, seed=0)
        e.reset(seed=3)
        states = e.get_state()[None]
        e.close()
    torch.manual_seed(0)
    pol = tiny_vla(action_dim=7)
    tok = ActionTokenizer(-0.5 * np.ones(7), 0.5 * np.ones(7))
    cfg = OnlineGRPOConfig(budget=2, num_envs=2, max_chunks=2, image_size=32,
                           grpo=GRPOConfig(group_size=2, batch_size=2, minibatch_size=2, dynamic_sampling=False))
    before = [p.detach().clone() for p in pol.parameters()]
    out = run_online_grpo(pol, "square", cfg, tok, make_env=make_env, initial_states=states)
    assert out["real_trajectories"] == 2 and out["updates"] == 1
    h = out["history"][0]
    assert h["grpo/chunks"] == 4.0  # 2 trajectories x 2 chunks (no success in 4 steps)
    # both trajectories failed -> zero advantage -> the update leaves the policy unchanged
    assert h["grpo/adv_abs_mean"] == 0.0
    assert all(torch.equal(a, p) for a, p in zip(before, pol.parameters()))


# ---------------------------------------------------------------------------------------------
# lifelong loop (the reach env plays both the real simulator and a perfect "world model")


def _lifelong_stages(calls):
    from wmpo.data.groups import assemble_batch
    from wmpo.rl.grpo import GRPOTrainer
    from wmpo.rl.lifelong import LifelongStages

    dec = ActionTokenizer(-np.ones(3), np.ones(3))
    states = _init_states(8, seed=3)

    def rollout(policy, n_groups, G, temperature):
        env = ReachVecEnv("reach", n_groups * G, 16, 0)
        instr = policy.encode_instructions(["reach"] * (n_groups * G))
        starts = np.repeat(states[:n_groups], G, axis=0)
        return rollout_groups(policy, env, starts, instr, dec, 6, temperature, torch.arange(n_groups).repeat_interleave(G))

    def collect(policy, P, it):
        calls.append(("collect", it))
        b = rollout(policy, P // 4, 4, 1.6)
        return {"n": len(b), "success_rate": float(b.success.float().mean())}

    def finetune_wm(rounds, it):
        calls.append(("wm", it, len(rounds)))
        return ReachVecEnv

    def finetune_reward(rounds, it):
        calls.append(("reward", it, len(rounds)))
        return "env-success"

    def run_wmpo(policy, wm, rm, it):
        calls.append(("wmpo", it))
        assert wm is ReachVecEnv and rm == "env-success"
        tr = GRPOTrainer(policy, GRPOConfig(group_size=4, batch_size=8, minibatch_size=8, lr=1e-3))
        batch, counts = assemble_batch([rollout(policy, 4, 4, 1.6)], 8)
        return tr.update(batch) if batch is not None else {}

    def evaluate(policy, it):
        calls.append(("eval", it))
        return {"success_rate": float(rollout(policy, 2, 2, None).success.float().mean())}

    return LifelongStages(collect, finetune_wm, finetune_reward, run_wmpo, evaluate)


def test_lifelong_loop_order_accumulation_and_resume(tmp_path):
    from wmpo.rl.lifelong import LifelongConfig, run_lifelong

    torch.manual_seed(0)
    pol = TinyPolicy(chunk_len=2, action_dim=3)
    calls = []
    recs = run_lifelong(pol, _lifelong_stages(calls), LifelongConfig(iterations=2, budget_per_iteration=8), tmp_path)
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert calls == [("eval", 0), ("collect", 1), ("wm", 1, 1), ("reward", 1, 1), ("wmpo", 1), ("eval", 1),
                     ("collect", 2), ("wm", 2, 2), ("reward", 2, 2), ("wmpo", 2), ("eval", 2)]
    assert recs[2]["real_trajectories"] == 16
    trained = {k: v.clone() for k, v in pol.state_dict().items()}
    # resume in a fresh process-like state: new policy object, more iterations -> only round 3 runs
    pol2 = TinyPolicy(chunk_len=2, action_dim=3)
    calls2 = []
    stages2 = _lifelong_stages(calls2)
    run_wmpo = stages2.run_wmpo
    loaded = {}

    def check_loaded(policy, wm, rm, it):
        loaded.update({k: v.clone() for k, v in policy.state_dict().items()})
        return run_wmpo(policy, wm, rm, it)

    stages2.run_wmpo = check_loaded
    recs2 = run_lifelong(pol2, stages2, LifelongConfig(iterations=3, budget_per_iteration=8), tmp_path)
    assert [c for c in calls2 if c[0] == "collect"] == [("collect", 3)]
    assert ("wm", 3, 3) in calls2  # data from the two finished rounds is kept
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert [r["iteration"] for r in recs2] == [0, 1, 2, 3]
