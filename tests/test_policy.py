"""VLAPolicy: protocol, shapes of parallel decoding, log-probs == reference, temperature, checkpoints."""
import numpy as np
import pytest
import torch

from wmpo import ops
from wmpo.models.policy import PolicyConfig, VLAPolicy, as_env_policy, load_policy, random_shift, save_policy
from wmpo.models.protocol import Policy
from wmpo.models.tokenizer import ActionTokenizer

CFG = PolicyConfig(image_size=32, patch_size=8, hidden_size=64, num_heads=4, vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=32)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    p = VLAPolicy(CFG).eval()
    # a sharper head so that temperature effects are large
    with torch.no_grad():
        p.head.weight.mul_(20)
    return p


def inputs(p, n=3, size=48):
    g = torch.Generator().manual_seed(n)
    frames = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    instr = p.encode_instructions(["stack the cubes", "make coffee", ""][:n] + ["x"] * max(0, n - 3))
    return frames, instr


def test_protocol_and_shapes(policy):
    assert isinstance(policy, Policy)
    frames, instr = inputs(policy)
    assert instr.shape == (3, 32) and instr.dtype == torch.int64
    assert instr[0, 0] == ord("s") + 1 and instr[2].eq(0).all()
    logits = policy.action_logits(frames, instr)
    assert logits.shape == (3, 8, 7, 256)
    tok, lp = policy.sample(frames, instr, 1.6)
    assert tok.shape == (3, 8, 7) and tok.dtype == torch.int64 and lp.shape == (3, 8, 7)
    assert (tok >= 0).all() and (tok < 256).all()
    # any input resolution (resized on the device), uint8 HWC too
    assert policy.action_logits(torch.rand(2, 3, 64, 80) * 2 - 1, instr[:2]).shape == (2, 8, 7, 256)


def test_parallel_decoding_is_per_sample(policy):
    """One forward for all K*D tokens; a sample's logits do not depend on the rest of the batch."""
    frames, instr = inputs(policy)
    full = policy.action_logits(frames, instr)
    one = policy.action_logits(frames[1:2], instr[1:2])
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)
    # different instructions give different logits
    other = policy.action_logits(frames[1:2], instr[0:1])
    assert (other - one).abs().max() > 1e-4


def test_log_prob_matches_reference(policy):
    frames, instr = inputs(policy)
    tok = torch.randint(0, 256, (3, 8, 7))
    for T in (1.0, 1.6, 0.5):
        lp, ent = policy.log_prob(frames, instr, tok, temperature=T)
        ref_lp, ref_ent = ops.action_logprob_ref(policy.action_logits(frames, instr), tok, temperature=T)
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
        z = torch.log_softmax(policy.action_logits(frames, instr) / T, -1)
        torch.testing.assert_close(lp, z.gather(-1, tok[..., None])[..., 0], atol=1e-5, rtol=1e-5)


def test_log_prob_is_differentiable(policy):
    frames, instr = inputs(policy, n=2)
    tok = torch.randint(0, 256, (2, 8, 7))
    lp, _ = policy.log_prob(frames, instr, tok, temperature=1.6)
    lp.sum((1, 2)).mean().backward()
    assert policy.head.weight.grad is not None and policy.head.weight.grad.abs().sum() > 0
    assert policy.queries.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


def test_sample_logp_and_temperature(policy):
    frames, instr = inputs(policy)
    torch.manual_seed(0)
    tok, lp = policy.sample(frames, instr, 1.6)
    ref, _ = policy.log_prob(frames, instr, tok, temperature=1.6)
    torch.testing.assert_close(lp, ref.detach(), atol=1e-5, rtol=1e-5)
    # greedy = argmax, logp at T=1, deterministic
    g1, glp = policy.sample(frames, instr, None)
    g2, _ = policy.sample(frames, instr, 0)
    assert torch.equal(g1, policy.action_logits(frames, instr).argmax(-1)) and torch.equal(g1, g2)
    torch.testing.assert_close(glp, policy.log_prob(frames, instr, g1, 1.0)[0].detach())
    # higher temperature -> higher entropy, and samples agree with greedy less often
    ents = [policy.log_prob(frames, instr, g1, T)[1].mean().item() for T in (0.5, 1.0, 1.6, 3.0)]
    assert all(a < b for a, b in zip(ents, ents[1:])), ents
    torch.manual_seed(1)
    agree_lo = (policy.sample(frames, instr, 0.3)[0] == g1).float().mean()
    agree_hi = (policy.sample(frames, instr, 3.0)[0] == g1).float().mean()
    assert agree_lo > agree_hi


def test_sampling_frequencies_follow_softmax():
    from wmpo.models.policy import sample_from_logits

    torch.manual_seed(0)
    logits = torch.full((256,), -60.0)
    logits[:4] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 20000
    tok, lp = sample_from_logits(logits.expand(n, 256), 1.6)
    freq = torch.bincount(tok, minlength=256).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits / 1.6, 0), atol=0.015, rtol=0)
    torch.testing.assert_close(lp, torch.log_softmax(logits / 1.6, 0)[tok])


def test_bad_inputs(policy):
    frames, instr = inputs(policy)
    with pytest.raises(ValueError, match="frames"):
        policy.action_logits(frames[:, :2], instr)
    with pytest.raises(ValueError, match="instr"):
        policy.action_logits(frames, instr[:2])
    with pytest.raises(ValueError, match="tokens"):
        policy.log_prob(frames, instr, torch.zeros(3, 8, 6, dtype=torch.int64))


def test_random_shift_translates():
    x = torch.zeros(4, 3, 16, 16)
    x[:, :, 6:10, 6:10] = 1
    y = random_shift(x, 3, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # square stays fully inside
    assert not torch.equal(y, x)
    assert torch.equal(random_shift(x, 0), x)


def test_checkpoint_round_trip_and_env_policy(policy, tmp_path):
    tok = ActionTokenizer(-np.ones(7) * 0.5, np.ones(7) * 0.5)
    save_policy(tmp_path / "p.pt", policy, tok, CFG)
    p2, tok2 = load_policy(tmp_path / "p.pt", "cpu")
    frames, instr = inputs(policy)
    torch.testing.assert_close(p2.action_logits(frames, instr), policy.action_logits(frames, instr))
    np.testing.assert_array_equal(tok2.q99, tok.q99)
    act = as_env_policy(p2, tok2)
    u8 = np.random.default_rng(0).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    a = act(u8, ["stack the cubes", "make coffee"])
    assert a.shape == (2, 8, 7) and a.dtype == np.float32
    assert np.all(np.abs(a) <= 0.5 + 1e-6)
    # greedy: equals decoding the argmax tokens
    from wmpo.utils.frames import uint8_to_model

    g, _ = p2.sample(uint8_to_model(torch.from_numpy(u8)), p2.encode_instructions(["stack the cubes", "make coffee"]), None)
    np.testing.assert_allclose(a, tok2.decode(g).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="path"):
        torch.save({"kind": "other"}, tmp_path / "x.pt")
        load_policy(tmp_path / "x.pt")
