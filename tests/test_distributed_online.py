"""Online GRPO (real-simulator rollouts) across processes (torch.distributed, gloo on CPUs): each rank
simulates whole groups from its share of the initial states, the global count keeps the batch at
exactly B, the data-parallel update equals one process's update on the same batch, and a 2-rank run
killed after a checkpoint resumes to the uninterrupted run's parameters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_online_workers as W  # noqa: E402
from test_distributed import _finish, _kill_tree  # noqa: E402
from wmpo.data.batch import TrajectoryBatch  # noqa: E402
from wmpo.rl.grpo import GRPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_process_batch(local: list[TrajectoryBatch], minibatch_size: int) -> TrajectoryBatch:
    """The batch one process would hold: its mini-batch i is the ranks' mini-batches i side by side
    (wmpo.rl.distributed.minibatch_shard_rows), group ids made unique across ranks."""
    N = len(local)
    m = minibatch_size // N
    parts = []
    for i in range(0, len(local[0]), m):
        for r, b in enumerate(local):
            part = b.index(slice(i, i + m))
            part.group = part.group + 1000 * r
            parts.append(part)
    return TrajectoryBatch.cat(parts)


def _first_frames(states: np.ndarray) -> np.ndarray:
    from test_online_grpo import ReachVecEnv

    return ReachVecEnv("reach", len(states), 16, 0).reset_to(states)


@pytest.fixture(scope="module")
def reach_two_ranks(tmp_path_factory):
    """One 2-rank online GRPO run on the reach env (budget 64, B = 8, dynamic sampling): each rank's records."""
    d = tmp_path_factory.mktemp("online2")
    mp.spawn(W.reach_worker, args=(2, str(d / "init"), str(d)), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_rank_online_update_equals_one_process_on_the_same_batch(reach_two_ranks):
    r0, r1 = reach_two_ranks
    cfg = W.reach_config()
    first = [r0["updates"][0], r1["updates"][0]]
    assert len(first[0]["batch"]) == len(first[1]["batch"]) == 4  # B / N on each rank
    ref_policy = W.reach_policy()
    init = W.params(ref_policy)
    GRPOTrainer(ref_policy, cfg.grpo).update(one_process_batch([u["batch"] for u in first], cfg.grpo.minibatch_size))
    ref = W.params(ref_policy)
    assert max(float((ref[k] - init[k]).abs().max()) for k in ref) > 1e-3  # the update did something
    for rank, u in enumerate(first):
        for k in ref:
            torch.testing.assert_close(u["params"][k], ref[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {k}")
    # control: the ranks' batches one after the other (not mini-batch by mini-batch) is another update
    ctrl_policy = W.reach_policy()
    wrong = TrajectoryBatch.cat([first[0]["batch"], first[1]["batch"]])
    wrong.group = torch.cat([first[0]["batch"].group, first[1]["batch"].group + 1000])
    GRPOTrainer(ctrl_policy, cfg.grpo).update(wrong)
    assert max(float((v - ref[k]).abs().max()) for k, v in W.params(ctrl_policy).items()) > 1e-4
    # the replicas stay equal after every update
    for k, v in r0["params"].items():
        torch.testing.assert_close(r1["params"][k], v, rtol=0, atol=0)


def test_global_count_keeps_the_batch_at_exactly_b_within_the_budget(reach_two_ranks):
    r0, r1 = reach_two_ranks
    cfg = W.reach_config()
    s0, s1 = r0["summary"], r1["summary"]
    assert s0["real_trajectories"] == s1["real_trajectories"] == r0["started"] + r1["started"] <= cfg.budget
    assert len(s0["history"]) == len(r0["updates"]) == len(r1["updates"]) >= 2
    dropped = 0
    for i, (u0, u1) in enumerate(zip(r0["updates"], r1["updates"])):
        kept = s0["history"][i]["online/kept"]
        assert kept == len(u0["batch"]) + len(u1["batch"]) and len(u0["batch"]) == len(u1["batch"])
        if i < len(r0["updates"]) - 1:  # only the last may be short (the budget ran out)
            assert kept == cfg.grpo.batch_size
        for u in (u0, u1):  # dynamic sampling: every kept group has a success and a failure
            for g in u["batch"].group.unique():
                s = u["batch"].success[u["batch"].group == g]
                assert len(s) == cfg.grpo.group_size and 0 < int(s.sum()) < len(s)
        dropped += s0["history"][i]["online/groups_dropped"]
    assert dropped > 0  # groups were dropped and still every full batch is exactly B


def test_ranks_simulate_disjoint_initial_states(reach_two_ranks):
    """Rank r's trajectories start from its own share of the initial states (checked on the frames they start from)."""
    states = W.reach_states()
    frames = _first_frames(states)
    shares = [set(), set()]
    for rank, rec in enumerate(reach_two_ranks):
        for u in rec["updates"]:
            for f in u["batch"].obs[:, 0].numpy():
                hits = [i for i in range(len(states)) if np.array_equal(frames[i], f)]
                assert hits, f"rank {rank}: a trajectory that does not start from an initial state"
                shares[rank].update(hits)
    half = len(states) // 2
    assert shares[0] and shares[1] and shares[0].isdisjoint(shares[1])
    assert max(shares[0]) < half <= min(shares[1])  # contiguous shares: rank 0 the first half


def test_square_real_simulator_split_smallest(tmp_path):
    """The real simulator (robosuite square, VecEnv workers per rank) split over 2 ranks: one group per rank from
    different initial states, a global batch of B = 4, one data-parallel update."""
    pytest.importorskip("wmpo.sim.vec_env")
    mp.spawn(W.square_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    recs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rec in recs:
        assert rec["summary"]["real_trajectories"] == 4 and rec["summary"]["updates"] == 1
        b = rec["updates"][0]["batch"]
        assert len(b) == 2 and torch.equal(b.obs[0, 0], b.obs[1, 0])  # one group: both start from one state
    a, b = (rec["updates"][0]["batch"].obs[0, 0] for rec in recs)
    assert not torch.equal(a, b)  # the ranks started from different initial states
    for k, v in recs[0]["params"].items():
        torch.testing.assert_close(recs[1]["params"][k], v, rtol=0, atol=0)


def _torchrun_online(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WMPO_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(Path(W.__file__)),
           "online", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_rank_online_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_torchrun_online(full))
    p = _torchrun_online(killed, "--pause", "30")
    state = killed / "state.pt"
    t0 = time.time()
    while not state.is_file() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.2)
    assert state.is_file(), "no checkpoint before the deadline"
    _kill_tree(p.pid)  # SIGKILL to the launcher and both ranks, during the pause after the first checkpoint
    p.wait()
    done_then = torch.load(state, weights_only=False)["iteration"]
    _finish(_torchrun_online(killed))
    sa, sb = json.loads((full / "summary.json").read_text()), json.loads((killed / "summary.json").read_text())
    assert 1 <= done_then < len(sa["saved_iterations"])
    assert sb["saved_iterations"] == sa["saved_iterations"][done_then:]  # the rerun did only what the kill lost
    assert sb["real_trajectories"] == sa["real_trajectories"] and sb["updates"] == sa["updates"] and sa["world_size"] == 2
    a, b = torch.load(full / "params.pt"), torch.load(killed / "params.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    for ha, hb in zip(sa["history"], sb["history"]):
        assert ha["grpo/loss"] == pytest.approx(hb["grpo/loss"], abs=1e-6)


def test_pipeline_spreads_online_grpo_only_when_it_splits_into_whole_groups():
    """The baselines stage spreads online GRPO over the ranks when B/G, M, the budget and the states split; else rank 0 runs it."""
    from dataclasses import replace

    from wmpo.config import get_preset
    from wmpo.pipeline.run import _online_splits

    micro = get_preset("micro", task="square").online  # B = G = 4: one group, not two ranks' worth
    assert not _online_splits(micro, 2) and not _online_splits(micro, 1)
    eight = replace(micro, grpo=replace(micro.grpo, batch_size=8))
    assert _online_splits(eight, 2) and not _online_splits(eight, 4)
    assert not _online_splits(replace(eight, num_initial_states=1), 2)
    assert not _online_splits(replace(eight, grpo=replace(eight.grpo, minibatch_size=1)), 2)
    cpu = get_preset("cpu", task="square").online  # B = 32 in groups of 8, M = 16, P = 128
    assert _online_splits(cpu, 2) and _online_splits(cpu, 4) and not _online_splits(cpu, 8)
