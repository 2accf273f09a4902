"""flow_step: the Euler update of rectified flow for all trajectories at once, in place,
x[:, c:] += (t_next - t_now) * v[:, c:]. Reference, custom op + fake, API (no backward: sampling only)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import check_frames, check_num_context, split_time
from wmpo.utils.checks import check_same_device, check_tensor


def flow_step_ref(x, v, t_now, t_next, *, num_context: int):
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:]. t_now/t_next: [B] tensors or floats. Returns x."""
    B = x.shape[0]
    dt = torch.as_tensor(t_next, dtype=torch.float32, device=x.device) - torch.as_tensor(t_now, dtype=torch.float32, device=x.device)
    dt = dt.expand(B) if dt.dim() == 0 else dt
    dt = dt.view(B, *([1] * (x.dim() - 1)))
    x[:, num_context:] = (x[:, num_context:].float() + dt * v[:, num_context:].float()).to(x.dtype)
    return x


def _impl(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
          t_next_value: float, num_context: int, backend: str) -> None:
    be = dispatch.pick(backend, x, v)
    if be != "ref" and not x.is_contiguous():
        be = "ref"
    if be == "triton":
        dispatch.kernel("flow_step").flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    elif be in ("cpp", "cuda"):
        dispatch.ext().flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    else:
        flow_step_ref(x, v, t_now_value if t_now is None else t_now, t_next_value if t_next is None else t_next,
                      num_context=num_context)


@torch.library.custom_op("wmpo::flow_step_", mutates_args=("x",))
def _op(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
        t_next_value: float, num_context: int, backend: str) -> None:
    _impl(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend)


@_op.register_fake
def _(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend):
    return None


def flow_step(x: Tensor, v: Tensor, t_now, t_next, *, num_context: int, backend: Optional[str] = None) -> Tensor:
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:] (t_now/t_next: floats or [B] tensors). Returns x."""
    check_frames("x", x)
    check_tensor("v", v, floating=True, shape=tuple(x.shape))
    check_same_device(x=x, v=v)
    check_num_context(num_context, x.shape[1])
    if torch.is_grad_enabled() and x.requires_grad:
        what = "a leaf Variable that requires grad" if x.is_leaf else "a tensor that requires grad"
        raise RuntimeError(f"flow_step: x is {what} and flow_step updates it in place without a backward "
                           "(a sampler step); call it under torch.no_grad() or on x.detach()")
    tn, tnv = split_time("t_now", t_now, x.shape[0], x)
    tx, txv = split_time("t_next", t_next, x.shape[0], x)
    if dispatch.reference_forced() and not backend:
        return flow_step_ref(x, v, tnv if tn is None else tn, txv if tx is None else tx, num_context=num_context)
    op = _impl if dispatch.eager_direct(x, v) else _op
    op(x, v, tn, tx, tnv, txv, num_context, backend or "")
    return x
