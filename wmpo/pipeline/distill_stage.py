"""The pipeline's distill_wm stage (RunConfig.distill_wm): the fine-tuned world model distilled into a
few-step student (wmpo.train.distill) on the same data it was fine-tuned on; WMPO then imagines with
the student at RunConfig.student_steps (Context.imagination_world_model)."""
from __future__ import annotations

from wmpo.pipeline.context import Context
from wmpo.utils.jsonable import jsonable


def stage_distill_wm(ctx: Context) -> dict:
    from wmpo.train.distill import distill_world_model

    stores = [ctx.output("base_rollouts")["store"], ctx.output("demos")["store"]]
    res = distill_world_model(ctx.cfg.distill, ctx.output("wm_finetune")["path"], stores, ctx.out / "distill_wm",
                              vae=ctx.output("vae")["path"], device=ctx.device)
    return jsonable({**res, "student_steps": ctx.cfg.student_steps})
