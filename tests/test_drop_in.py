"""The two recipes of docs/drop_in.md, checked against the blocks they replace (issue 14, part 2):

1. an STDiT3-style spatial/temporal block (Open-Sora's math, written here) with a context-frame
   mask (x_mask: context frames modulated with the t0 vectors), and
2. a diffusers ``BasicTransformerBlock(norm_type="ada_norm_zero")`` (the real class; its norm3 has
   LayerNorm weight/bias, which the recipe must honour).

Forward and gradients, in bf16, within the 2x-bf16 rule of tests/test_ops.py (error against a
float64 copy of the block <= max(2 x the eager bf16 block's error, 1 bf16 ulp of the scale));
float32 tightly. Plus the Open-Sora sampler mapping of flow_step (time units, velocity sign)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmpo import nn as wnn
from wmpo import ops

BF16_ULP = 2.0**-7


def _within_rule(got, want64, eager, what):
    eager_err = (eager.double() - want64).abs().max().item()
    tol = max(2 * eager_err, BF16_ULP * want64.abs().max().item())
    err = (got.double() - want64).abs().max().item()
    assert err <= tol, f"{what}: error {err:.3g} > tolerance {tol:.3g} (eager bf16 error {eager_err:.3g})"


# ------------------------------------------------------------------ 1. STDiT3-style block (Open-Sora math)


class Attention(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x, context=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, -1) if context is None else (self.qkv(x).chunk(3, -1)[0], *self.qkv(context).chunk(3, -1)[1:])
        split = lambda t: t.reshape(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class STDiT3StyleBlock(nn.Module):
    """Open-Sora STDiT3Block's math: adaLN-single modulation from a 6-way table plus the timestep
    embedding, spatial or temporal self-attention, cross-attention, MLP; context frames (x_mask
    False) take the modulation of timestep 0 (t0) via t_mask_select on the token tensors."""

    def __init__(self, C, heads, temporal):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(C, eps=1e-6, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(C, eps=1e-6, elementwise_affine=False)
        self.attn, self.cross_attn = Attention(C, heads), Attention(C, heads)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"), nn.Linear(4 * C, C))
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)

    def chunks(self, t, B):  # six [B, 1, C]
        return (self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)

    def attend(self, x, T, S):
        B, N, C = x.shape
        if self.temporal:  # B (T S) C -> (B S) T C
            x = x.view(B, T, S, C).transpose(1, 2).reshape(B * S, T, C)
            return self.attn(x).view(B, S, T, C).transpose(1, 2).reshape(B, N, C)
        return self.attn(x.reshape(B * T, S, C)).view(B, N, C)

    @staticmethod
    def t_mask_select(x_mask, x, masked_x, T, S):
        B, N, C = x.shape
        out = torch.where(x_mask[:, :, None, None], x.view(B, T, S, C), masked_x.view(B, T, S, C))
        return out.reshape(B, N, C)

    def forward(self, x, y, t, t0, x_mask, T, S):
        B = x.shape[0]
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = self.chunks(t, B)
        sh_msa0, sc_msa0, g_msa0, sh_mlp0, sc_mlp0, g_mlp0 = self.chunks(t0, B)
        xn = self.norm1(x)
        x_m = self.t_mask_select(x_mask, xn * (1 + sc_msa) + sh_msa, xn * (1 + sc_msa0) + sh_msa0, T, S)
        x_m = self.attend(x_m, T, S)
        x = x + self.t_mask_select(x_mask, g_msa * x_m, g_msa0 * x_m, T, S)
        x = x + self.cross_attn(x, y)
        xn = self.norm2(x)
        x_m = self.mlp(self.t_mask_select(x_mask, xn * (1 + sc_mlp) + sh_mlp, xn * (1 + sc_mlp0) + sh_mlp0, T, S))
        return x + self.t_mask_select(x_mask, g_mlp * x_m, g_mlp0 * x_m, T, S)


def stdit3_fused_forward(blk, x, y, t, t0, x_mask, T, S):
    """Recipe 1 of docs/drop_in.md: per-frame modulation [B, T, C] from the mask, then the fused ops
    on x [B, T*S, C] as the block holds it (no reshapes)."""
    B = x.shape[0]
    sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = (
        wnn.frame_modulation(x_mask, m, m0) for m, m0 in zip(blk.chunks(t, B), blk.chunks(t0, B)))
    x_m = wnn.AdaLNModulate.from_layernorm(blk.norm1)(x, sh_msa, sc_msa)
    x = ops.gated_residual(x, blk.attend(x_m, T, S), g_msa)
    x = x + blk.cross_attn(x, y)
    x_m = blk.mlp(wnn.AdaLNModulate.from_layernorm(blk.norm2)(x, sh_mlp, sc_mlp))
    return ops.gated_residual(x, x_m, g_mlp)


def _stdit_inputs(dtype, B=2, T=4, S=6, C=48, L=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T * S, C, generator=g).to(dtype)
    y = torch.randn(B, L, C, generator=g).to(dtype)
    t, t0 = (0.5 * torch.randn(B, 6 * C, generator=g)).to(dtype), (0.5 * torch.randn(B, 6 * C, generator=g)).to(dtype)
    x_mask = torch.tensor([[False, False, True, True], [False, True, True, True]])  # context frames first
    return x, y, t, t0, x_mask, T, S


def _run(fn, blk, inputs, cot):
    """Output and gradients of (x, t, t0) and of every parameter, for the cotangent `cot`."""
    x, y, t, t0, *rest = inputs
    leaves = [a.clone().requires_grad_(True) for a in (x, t, t0)]
    blk.zero_grad(set_to_none=True)
    out = fn(blk, leaves[0], y, leaves[1], leaves[2], *rest)
    (out.float() * cot).sum().backward()
    grads = {"x": leaves[0].grad, "t": leaves[1].grad, "t0": leaves[2].grad}
    grads.update({n: p.grad for n, p in blk.named_parameters()})
    return out.detach(), grads


@pytest.mark.parametrize("temporal", [False, True], ids=["spatial", "temporal"])
def test_stdit3_recipe_matches_block(temporal):
    torch.manual_seed(1)
    blk32 = STDiT3StyleBlock(48, 4, temporal)
    inputs32 = _stdit_inputs(torch.float32)
    cot = torch.randn(inputs32[0].shape, generator=torch.Generator().manual_seed(2))
    eager_fn = lambda b, *a: b(*a)  # noqa: E731
    # float32: the recipe is the same function
    o_e, g_e = _run(eager_fn, blk32, inputs32, cot)
    o_f, g_f = _run(stdit3_fused_forward, blk32, inputs32, cot)
    torch.testing.assert_close(o_f, o_e, rtol=1e-4, atol=1e-4)
    for k in g_e:
        torch.testing.assert_close(g_f[k], g_e[k], rtol=1e-3, atol=1e-4, msg=k)
    # bf16: the 2x-bf16 rule against a float64 copy
    blk64, blk16 = copy.deepcopy(blk32).double(), copy.deepcopy(blk32).bfloat16()
    o64, g64 = _run(eager_fn, blk64, tuple(a.double() if a.is_floating_point() else a for a in inputs32[:5]) + inputs32[5:], cot)
    inputs16 = _stdit_inputs(torch.bfloat16)
    o16, g16 = _run(eager_fn, blk16, inputs16, cot)
    of, gf = _run(stdit3_fused_forward, blk16, inputs16, cot)
    assert of.dtype == torch.bfloat16
    _within_rule(of, o64, o16, "output")
    for k in g64:
        _within_rule(gf[k], g64[k], g16[k], f"grad {k}")


def test_stdit3_recipe_uses_the_mask():
    """The context frames really take the t0 modulation: changing t0 changes only their tokens."""
    torch.manual_seed(3)
    blk = STDiT3StyleBlock(48, 4, temporal=False)  # spatial: frames do not mix
    x, y, t, t0, x_mask, T, S = _stdit_inputs(torch.float32)
    with torch.no_grad():
        a = stdit3_fused_forward(blk, x, y, t, t0, x_mask, T, S).view(2, T, S, -1)
        b = stdit3_fused_forward(blk, x, y, t, t0 + 1.0, x_mask, T, S).view(2, T, S, -1)
    changed = (a - b).abs().amax(dim=(2, 3)) > 1e-6
    assert torch.equal(changed, ~x_mask)


# ------------------------------------------------------------------ 2. diffusers BasicTransformerBlock (ada_norm_zero)


def dit_fused_forward(blk, x, timestep, class_labels):
    """Recipe 2 of docs/drop_in.md: diffusers BasicTransformerBlock(norm_type="ada_norm_zero") without
    cross-attention, with the block's own modules and parameters (norm3's weight/bias included)."""
    n1 = blk.norm1  # AdaLayerNormZero
    emb = n1.linear(n1.silu(n1.emb(timestep, class_labels, hidden_dtype=x.dtype)))
    sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = emb.chunk(6, dim=1)  # each [B, D]
    h = wnn.AdaLNModulate.from_layernorm(n1.norm)(x, sh_msa, sc_msa)
    x, h = wnn.GatedResidualAdaLN.from_layernorm(blk.norm3)(x, blk.attn1(h), g_msa, sh_mlp, sc_mlp)
    return ops.gated_residual(x, blk.ff(h), g_mlp)


def _dit_block():
    diffusers_attention = pytest.importorskip("diffusers.models.attention")
    torch.manual_seed(4)
    blk = diffusers_attention.BasicTransformerBlock(64, 2, 32, norm_type="ada_norm_zero", num_embeds_ada_norm=10,
                                                    activation_fn="gelu-approximate").eval()
    assert blk.attn2 is None and blk.norm3.weight is not None
    with torch.no_grad():  # a trained-looking norm3 affine and a non-zero adaLN-Zero projection
        blk.norm3.weight.copy_(1 + 0.2 * torch.randn(64))
        blk.norm3.bias.copy_(0.2 * torch.randn(64))
        blk.norm1.linear.weight.normal_(0, 0.05)
        blk.norm1.linear.bias.normal_(0, 0.2)
    return blk


def _dit_run(fn, blk, x, ts, labels, cot):
    xl = x.clone().requires_grad_(True)
    blk.zero_grad(set_to_none=True)
    out = fn(blk, xl, ts, labels)
    (out.float() * cot).sum().backward()
    grads = {"x": xl.grad, **{n: p.grad for n, p in blk.named_parameters() if p.grad is not None}}
    return out.detach(), grads


def test_diffusers_dit_recipe_matches_block():
    blk32 = _dit_block()
    eager_fn = lambda b, x, ts, lab: b(x, timestep=ts, class_labels=lab)  # noqa: E731
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 64, generator=g)
    ts, labels = torch.tensor([3, 700]), torch.tensor([1, 7])
    cot = torch.randn(x.shape, generator=g)
    o_e, g_e = _dit_run(eager_fn, blk32, x, ts, labels, cot)
    o_f, g_f = _dit_run(dit_fused_forward, blk32, x, ts, labels, cot)
    torch.testing.assert_close(o_f, o_e, rtol=1e-4, atol=1e-4)
    assert g_f.keys() == g_e.keys() and "norm3.weight" in g_e and "norm3.bias" in g_e
    for k in g_e:
        torch.testing.assert_close(g_f[k], g_e[k], rtol=1e-3, atol=1e-4, msg=k)
    blk64, blk16 = copy.deepcopy(blk32).double(), copy.deepcopy(blk32).bfloat16()
    o64, g64 = _dit_run(eager_fn, blk64, x.double(), ts, labels, cot)
    o16, g16 = _dit_run(eager_fn, blk16, x.bfloat16(), ts, labels, cot)
    of, gf = _dit_run(dit_fused_forward, blk16, x.bfloat16(), ts, labels, cot)
    _within_rule(of, o64, o16, "output")
    for k in g64:
        _within_rule(gf[k], g64[k], g16[k], f"grad {k}")


# ------------------------------------------------------------------ Open-Sora's sampler on flow_step


def test_open_sora_euler_loop_maps_onto_flow_step():
    """Open-Sora RFLOW: t in [0, 1000] (1000 = noise), the model predicts v = x0 - noise, and a step
    is z += v * (t_i - t_{i+1}) / 1000 on latents [B, C, T, H, W] with the context frames (mask
    False) kept. flow_step with Open-Sora's own timepoints (1 - t / 1000) and frame_dim=2 is that
    step; wmpo's convention (t/1000, v negated) is the same update."""
    g = torch.Generator().manual_seed(6)
    B, C, T, H, W, ctx = 2, 4, 5, 3, 3, 2
    x0 = torch.randn(B, C, T, H, W, generator=g)
    mask = torch.arange(T)[None].expand(B, T) >= ctx  # False = context frame
    timesteps = [(1.0 - i / 6) * 1000.0 for i in range(6)]
    z_os = torch.where(mask[:, None, :, None, None], torch.randn(B, C, T, H, W, generator=g), x0)
    z_ops, z_wmpo = z_os.clone(), z_os.clone()
    for i, t in enumerate(timesteps):
        v = torch.randn(B, C, T, H, W, generator=g)  # stands in for the model's v = x0 - noise
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else 0.0
        z_os = z_os + v * (t - t_next) / 1000  # Open-Sora's step ...
        z_os = torch.where(mask[:, None, :, None, None], z_os, x0)  # ... and its context-frame mask
        ops.flow_step(z_ops, v, 1 - t / 1000, 1 - t_next / 1000, num_context=ctx, frame_dim=2)
        ops.flow_step(z_wmpo, -v, t / 1000, t_next / 1000, num_context=ctx, frame_dim=2)
    torch.testing.assert_close(z_ops, z_os, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_wmpo, z_os, rtol=1e-5, atol=1e-5)
    assert torch.equal(z_ops[:, :, :ctx], x0[:, :, :ctx])


def test_nn_modules_share_the_layernorm_parameters():
    ln = nn.LayerNorm(8, eps=1e-5)
    m = wnn.AdaLNModulate.from_layernorm(ln)
    assert m.weight is ln.weight and m.bias is ln.bias and m.eps == 1e-5
    assert wnn.AdaLNModulate(8).weight is None  # elementwise_affine=False, as DiT's norms
    x, s = torch.randn(2, 6, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(m(x, s, s), ln(x) * (1 + s.repeat_interleave(2, 1)) + s.repeat_interleave(2, 1),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="^norm"):
        wnn.GatedResidualAdaLN.from_layernorm(nn.Linear(8, 8))
