"""Triton kernel: frame-causal attention over short sequences (the DiT's temporal attention).

q [N, H, T_q, hd], k/v [N, H, T_k, hd] with T_k = num_cached + T_q; query i sees keys
0 .. num_cached + i. T is tiny (about 12 frames), so one (n, h) row's whole attention fits in
registers: each program packs BLOCK_R rows and computes their attention at once, with fp32
softmax. Two variants of the same math:

- ``use_dot=True``: batched tensor-core matmuls (3-D ``tl.dot``) on [BLOCK_R, T, hd] tiles;
- ``use_dot=False``: CUDA-core online softmax over the keys, one key frame per step.

Every load is upcast to fp32 first (the Triton interpreter computes bf16 arithmetic wrongly); the
dot path casts operands back to the input dtype right before the tensor-core matmul. On CPU
tensors (interpreter only) bf16 rounding is emulated in fp32, because the interpreter's bf16 dot
is wrong and its fp32 -> bf16 cast truncates instead of rounding to nearest.
Forward only: wmpo.ops.frame_causal_attention supplies the backward. The frame and channel strides are
compile-time constants (one compilation per layout), so the compiler can prove the 16-byte
alignment of each frame's hd-vector (hd = 72 is not a multiple of 16 elements) and vectorize loads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device


@triton.jit
def _round_to_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), kept in fp32. The interpreter's own
    fp32 -> bf16 cast truncates; on the GPU this equals x.to(bf16).to(fp32)."""
    b = x.to(tl.uint32, bitcast=True)
    b = b + 0x7FFF + ((b >> 16) & 1)
    b = (b >> 16) << 16
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _cast_operand(x, LOWP: tl.constexpr, IS_BF16: tl.constexpr, EMULATE: tl.constexpr):
    """Matmul operand in the input precision: a real bf16/fp16 cast on the GPU, an fp32 value
    rounded to that precision in the interpreter (whose bf16 dot is wrong)."""
    if LOWP:
        if EMULATE:
            if IS_BF16:
                return _round_to_bf16(x)
            else:
                return x.to(tl.float16).to(tl.float32)
        else:
            if IS_BF16:
                return x.to(tl.bfloat16)
            else:
                return x.to(tl.float16)
    else:
        return x


@triton.jit
def _row_offset(n, h, s_n, s_h, ROW_ALIGN: tl.constexpr):
    """Element offset of the (n, h) rows (1-D, [BLOCK_R]). The batch and head strides are runtime values, and Triton
    only learns alignment from those divisible by 16; a head stride such as hd = 72 (q a view of
    [N, T, H, hd]) would leave every load scalar. ROW_ALIGN (row_alignment(), a power of two dividing
    every batch and head stride) tells the compiler what the launcher checked."""
    off = n * s_n + h * s_h
    if ROW_ALIGN > 1:
        off = tl.multiple_of(off, ROW_ALIGN)
    return off


@triton.jit
def _frame_causal_attn_dot_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    R, H, num_cached, scale,
    sqn, sqh, sqt: tl.constexpr, sqd: tl.constexpr,
    skn, skh, skt: tl.constexpr, skd: tl.constexpr,
    svn, svh, svt: tl.constexpr, svd: tl.constexpr,
    son, soh, sot: tl.constexpr, sod: tl.constexpr,
    T_Q: tl.constexpr, T_K: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_TQ: tl.constexpr, BLOCK_TK: tl.constexpr, BLOCK_D: tl.constexpr,
    LOWP: tl.constexpr, IS_BF16: tl.constexpr, EMULATE: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    n = (rows // H).to(tl.int64)
    h = (rows % H).to(tl.int64)
    r3 = row_ok[:, None, None]
    tq = tl.arange(0, BLOCK_TQ)[None, :, None]
    tk = tl.arange(0, BLOCK_TK)[None, :, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    d_ok = d < HEAD_DIM

    q_mask = r3 & (tq < T_Q) & d_ok
    kv_mask = r3 & (tk < T_K) & d_ok
    q = tl.load(q_ptr + _row_offset(n, h, sqn, sqh, ROW_ALIGN)[:, None, None] + tq * sqt + d * sqd, mask=q_mask, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + _row_offset(n, h, skn, skh, ROW_ALIGN)[:, None, None] + tk * skt + d * skd, mask=kv_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + _row_offset(n, h, svn, svh, ROW_ALIGN)[:, None, None] + tk * svt + d * svd, mask=kv_mask, other=0.0).to(tl.float32)

    kt = tl.permute(k, (0, 2, 1))  # [R, D, TK]
    q = _cast_operand(q, LOWP, IS_BF16, EMULATE)
    kt = _cast_operand(kt, LOWP, IS_BF16, EMULATE)
    if LOWP and not EMULATE:
        s = tl.dot(q, kt)
    else:
        s = tl.dot(q, kt, input_precision="ieee")
    s = s * scale  # [R, TQ, TK] fp32

    qi = tl.arange(0, BLOCK_TQ)[None, :, None]
    kj = tl.arange(0, BLOCK_TK)[None, None, :]
    visible = (kj <= qi + num_cached) & (kj < T_K)
    s = tl.where(visible, s, float("-inf"))
    m = tl.max(s, axis=2)
    m = tl.where(m == float("-inf"), 0.0, m)  # padded query rows: all keys masked
    p = tl.exp(s - m[:, :, None])
    denom = tl.sum(p, axis=2)
    denom = tl.where(denom == 0.0, 1.0, denom)
    p = p / denom[:, :, None]

    p = _cast_operand(p, LOWP, IS_BF16, EMULATE)
    v = _cast_operand(v, LOWP, IS_BF16, EMULATE)
    if LOWP and not EMULATE:
        o = tl.dot(p, v)
    else:
        o = tl.dot(p, v, input_precision="ieee")
    if EMULATE and IS_BF16:
        o = _round_to_bf16(o)
    o_mask = q_mask
    tl.store(o_ptr + _row_offset(n, h, son, soh, ROW_ALIGN)[:, None, None] + tq * sot + d * sod, o.to(o_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _frame_causal_attn_loop_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    R, H, num_cached, scale,
    sqn, sqh, sqt: tl.constexpr, sqd: tl.constexpr,
    skn, skh, skt: tl.constexpr, skd: tl.constexpr,
    svn, svh, svt: tl.constexpr, svd: tl.constexpr,
    son, soh, sot: tl.constexpr, sod: tl.constexpr,
    T_Q: tl.constexpr, T_K: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_TQ: tl.constexpr, BLOCK_D: tl.constexpr,
    EMULATE_BF16_STORE: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    n = (rows // H).to(tl.int64)
    h = (rows % H).to(tl.int64)
    tq = tl.arange(0, BLOCK_TQ)[None, :, None]
    d3 = tl.arange(0, BLOCK_D)[None, None, :]
    q_mask = row_ok[:, None, None] & (tq < T_Q) & (d3 < HEAD_DIM)
    q = tl.load(q_ptr + _row_offset(n, h, sqn, sqh, ROW_ALIGN)[:, None, None] + tq * sqt + d3 * sqd,
                mask=q_mask, other=0.0).to(tl.float32) * scale  # [R, TQ, D]

    d2 = tl.arange(0, BLOCK_D)[None, :]
    kv_mask = row_ok[:, None] & (d2 < HEAD_DIM)
    k_base = k_ptr + _row_offset(n, h, skn, skh, ROW_ALIGN)[:, None] + d2 * skd
    v_base = v_ptr + _row_offset(n, h, svn, svh, ROW_ALIGN)[:, None] + d2 * svd
    qi = tl.arange(0, BLOCK_TQ)[None, :]

    m_i = tl.full((BLOCK_R, BLOCK_TQ), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_R, BLOCK_TQ), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_TQ, BLOCK_D), tl.float32)
    for j in tl.static_range(T_K):
        kj = tl.load(k_base + j * skt, mask=kv_mask, other=0.0).to(tl.float32)  # [R, D]
        vj = tl.load(v_base + j * svt, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(q * kj[:, None, :], axis=2)  # [R, TQ]
        s = tl.where(qi + num_cached >= j, s, float("-inf"))
        m_new = tl.maximum(m_i, s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * vj[:, None, :]
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_i[:, :, None]
    if EMULATE_BF16_STORE:
        o = _round_to_bf16(o)
    tl.store(o_ptr + _row_offset(n, h, son, soh, ROW_ALIGN)[:, None, None] + tq * sot + d3 * sod,
             o.to(o_ptr.dtype.element_ty), mask=q_mask)


def default_config(T_q: int, T_k: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Launch parameters used when the caller gives none (GPU values: first guesses, tune with bench)."""
    if device.type != "cuda":
        # interpreter: few, fat programs (each program costs ~0.1-0.3 s whatever its size)
        return {"use_dot": False, "block_r": 64, "num_warps": 4}
    use_dot = dtype in (torch.bfloat16, torch.float16)
    return {"use_dot": use_dot, "block_r": 4 if use_dot else 2, "num_warps": 4}


def frame_causal_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_cached: int,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    use_dot: bool | None = None,
    block_r: int | None = None,
    num_warps: int | None = None,
    fallback_on_error: bool = True,
) -> torch.Tensor:
    """Launch the kernel. Inputs are validated by wmpo.ops.frame_causal_attention; any strides are accepted.

    `use_dot`, `block_r`, `num_warps`: None = default_config. If the tl.dot variant fails to
    compile on a GPU and `fallback_on_error`, it warns, and this process uses the loop variant.
    """
    N, H, T_q, hd = q.shape
    T_k = k.shape[2]
    cfg = default_config(T_q, T_k, hd, q.dtype, q.device)
    use_dot = cfg["use_dot"] if use_dot is None else use_dot
    block_r = cfg["block_r"] if block_r is None else block_r
    num_warps = cfg["num_warps"] if num_warps is None else num_warps
    if out is None:
        out = torch.empty((N, H, T_q, hd), dtype=q.dtype, device=q.device)
    R = N * H
    if R == 0 or T_q == 0:
        return out
    block_d = max(16, triton.next_power_of_2(hd))
    emulate = q.device.type != "cuda"  # CPU tensors only run in the Triton interpreter
    grid = (triton.cdiv(R, block_r),)
    common = (
        q, k, v, out, R, H, int(num_cached), float(scale),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
    )
    row_align = row_alignment(q, k, v, out)
    if use_dot and q.device.type == "cuda" and _DOT_BROKEN:
        use_dot = False
    if use_dot:
        try:
            _launch_dot(grid, common, T_q, T_k, hd, block_r, block_d, q.dtype, emulate, num_warps, row_align)
            return out
        except Exception as e:  # noqa: BLE001 - 3-D tl.dot support varies by GPU / Triton version
            if q.device.type != "cuda" or not fallback_on_error:
                raise
            _DOT_BROKEN.append(repr(e))
            import warnings

            warnings.warn(f"wmpo temporal attention: the tl.dot kernel failed ({e!r:.300}); using the loop kernel", RuntimeWarning)
    with on_device(common[0]):
        _frame_causal_attn_loop_kernel[grid](
            *common,
            T_Q=T_q, T_K=T_k, HEAD_DIM=hd,
            BLOCK_R=block_r, BLOCK_TQ=triton.next_power_of_2(T_q), BLOCK_D=triton.next_power_of_2(hd),
            EMULATE_BF16_STORE=emulate and out.dtype == torch.bfloat16, ROW_ALIGN=row_align,
            num_warps=num_warps,
        )
    return out


_DOT_BROKEN: list[str] = []  # set after the first failed tl.dot launch on this process's GPU


def row_alignment(*ts: torch.Tensor) -> int:
    """The largest power of two, up to 16, dividing the batch and head strides (elements) of every
    tensor: the alignment _row_offset may promise the compiler. The base pointers' 16-byte alignment
    Triton checks itself."""
    align = 16
    for t in ts:
        for s, size in zip(t.stride()[:2], t.shape[:2]):
            while size > 1 and align > 1 and s % align:
                align //= 2
    return align


def _launch_dot(grid, common, T_q, T_k, hd, block_r, block_d, dtype, emulate, num_warps, row_align):
    with on_device(common[0]):
        _frame_causal_attn_dot_kernel[grid](
            *common,
            T_Q=T_q, T_K=T_k, HEAD_DIM=hd,
            BLOCK_R=block_r, BLOCK_TQ=max(16, triton.next_power_of_2(T_q)),
            BLOCK_TK=max(16, triton.next_power_of_2(T_k)), BLOCK_D=block_d,
            LOWP=dtype in (torch.bfloat16, torch.float16), IS_BF16=dtype == torch.bfloat16,
            EMULATE=emulate, ROW_ALIGN=row_align,
            num_warps=num_warps,
        )
