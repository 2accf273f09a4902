"""DIR/report.md: a table like the paper's Table 1, success lengths, training curves, videos."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wmpo.pipeline.disruptions import disruption_report_lines
from wmpo.rl.wmpo import upgrade_history_record

LABELS = {"base": "Base policy (SFT)", "online_grpo": "Online GRPO (real env)", "dpo": "DPO (offline)", "wmpo": "WMPO (ours)",
          "lifelong": "Lifelong WMPO (ours)"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(res: dict) -> str:
    ci = res.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"[{_pct(ci[0])}, {_pct(ci[1])}]"
    return "-"


def _plot_curves(history: list[dict], path: Path, real_base: dict | None = None) -> bool:
    """WMPO's per-iteration curves; the real check starts from the base policy's point (iteration 0) when given."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    keys = [("imagined_success_rate", "imagined success rate"), ("grpo/loss", "GRPO loss"),
            ("grpo/clip_frac", "clip fraction"), ("grpo/ratio_mean", "ratio (mean)"), ("grpo/entropy", "policy entropy"),
            ("real/success_rate", "real success, held-out train states")]
    keys = [(k, t) for k, t in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, (k, title) in zip(axes[0], keys):
        xs = [i for i, h in zip(it, history) if k in h]
        ys = [h[k] for h in history if k in h]
        if k == "real/success_rate" and real_base is not None:
            xs, ys = [0] + xs, [real_base["success_rate"]] + ys
        ax.plot(xs, ys, marker="o")
        ax.set_title(title)
        ax.set_xlabel("WMPO iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _diagnostics_lines(diag: dict | None, cfg: Any) -> list[str]:
    """The learned simulator checked on held-out real base-policy episodes, before WMPO."""
    if not diag:
        return []
    lines = ["", "## Diagnostics (held-out real base-policy episodes, before WMPO)", "",
             f"{diag['episodes']} real base-policy episodes on training initial states that no model trained on "
             f"(real success rate {_pct(diag['real_success_rate'])}%).", "",
             "Open-loop replay of their real actions from their real first frame (PSNR dB / SSIM vs frames after the first):", "",
             "| sampler steps | frame | world model | repeat first frame | VAE reconstruction | episodes |", "|---|---|---|---|---|---|"]
    for key, fid in diag["fidelity"].items():
        for h, a in fid["at"].items():
            lines.append(f"| {key.removesuffix('_steps').replace('_', ' ')} | {h} | {_f(a['imagined_psnr'])} / {_f(a['imagined_ssim'], '.3f')} | "
                         f"{_f(a['first_frame_psnr'])} / {_f(a['first_frame_ssim'], '.3f')} | {_f(a['vae_psnr'])} / "
                         f"{_f(a['vae_ssim'], '.3f')} | {a['episodes']} |")
    main = diag["fidelity"].get(f"{cfg.sampler_steps}_steps", {}).get("outcome", {})
    rw, cl = diag.get("reward_on_heldout", {}), diag.get("closed_loop", {})
    lines += ["", "![fidelity](diagnostics/fidelity.png)", "",
              f"- Outcome agreement (reward model on the imagined replay vs the real outcome, {cfg.sampler_steps} steps): "
              f"{_pct(main.get('agreement'))}% (target >= 80%).",
              f"- Reward model on the real held-out episodes: precision {_f(rw.get('precision'))}, recall {_f(rw.get('recall'))}, "
              f"F1 {_f(rw.get('f1'))} ({rw.get('positives', '-')} successes of {rw.get('episodes', '-')}; target F1 >= 0.9).",
              f"- Closed loop, base policy from the same initial states at T = {cfg.grpo.temperature}: imagined success "
              f"{_pct(cl.get('imagined_success_rate'))}% vs real {_pct(cl.get('real_success_rate'))}% (target within 10 points)."]
    sens = diag.get("action_sensitivity")
    if sens:
        at = {k: v for k, v in sens.items() if k.startswith("t") and isinstance(v, dict)}
        lines.append("- Action sensitivity (velocity error on the latent pixels that move, real actions vs another window's; "
                     "gap 1.00 = the world model ignores its actions): "
                     + "; ".join(f"t = {k[1:]}: {_f(v['moving'])} vs {_f(v['moving_permuted'])}, gap {_f(v['action_gap'])}"
                                 for k, v in at.items())
                     + f" ({sens['windows']} windows, {_pct(sens['moving_fraction'])}% of latent pixels moving).")
    return lines


def write_report(ctx: Any) -> Path:
    out: Path = ctx.out
    cfg = ctx.cfg
    outs = ctx.runner.outputs
    ev = outs.get("evaluate", {})
    lines = [f"# WMPO run: task `{cfg.task}`, preset `{cfg.preset}`", ""]
    if cfg.preset in ("micro", "tiny"):
        lines += ["> The tiny/micro presets are smoke tests of the whole pipeline on a CPU: models are tiny and",
                  "> trained for minutes, so the numbers below are not claims about WMPO.", ""]
    lines += ["## Success rate on the evaluation initial states (paper Table 1)", "",
              f"Real-rollout budget P = {cfg.real_budget}; {cfg.eval_episodes} evaluation episodes per policy, greedy actions."
              + (f" Lifelong WMPO ran {cfg.lifelong_rounds} more round(s), each with P more real rollouts." if cfg.lifelong_rounds else ""), "",
              "| method | success rate (%) | 95% CI | mean length of successes (steps) | episodes | vs base: McNemar exact p (n01 / n10) |",
              "|---|---|---|---|---|---|"]
    for name in ("base", "online_grpo", "dpo", "wmpo", "lifelong"):
        if name in ev:
            r = ev[name]
            msl = r.get("mean_success_length")
            mc = r.get("vs_base_mcnemar")
            mc_s = f"{mc['p']:.3g} ({mc['n01']} / {mc['n10']})" if mc else "-"
            lines.append(f"| {LABELS[name]} | {_pct(r.get('success_rate'))} | {_ci(r)} | "
                         f"{'-' if msl is None or msl != msl else f'{msl:.1f}'} | {r.get('n', '-')} | {mc_s} |")
    if any(ev.get(n, {}).get("vs_base_mcnemar") for n in ev):
        lines += ["", "n01: evaluation states the base policy failed and the method solved; n10: the reverse."]
    lines += disruption_report_lines(outs.get("disruptions"), ev)
    lines += _diagnostics_lines(outs.get("diagnostics"), cfg)
    from wmpo.pipeline.lifelong import report_lines as lifelong_lines

    lines += lifelong_lines(outs, cfg)
    lines += ["", "## Pipeline", "", "Seconds of each stage's last run, and over every run (machines, resumes and data "
              "regenerations, from stages/history.jsonl; a run killed mid-stage is not counted there).", "",
              "| stage | seconds | all runs | summary |", "|---|---|---|---|"]
    all_runs = ctx.runner.history_seconds()
    for marker in sorted((out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        m = json.loads(marker.read_text())
        summ = {k: v for k, v in m["outputs"].items() if isinstance(v, (int, float, str)) and not str(v).startswith("/")}
        summ_s = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(summ.items())[:6])
        tot = all_runs.get(m["stage"])
        lines.append(f"| {m['stage']} | {m['seconds']:.1f} | {'-' if tot is None else f'{tot:.0f}'} | {summ_s} |")
    d = outs.get("wmpo", {}).get("distributed")
    if d:  # docs/distributed.md
        lines += ["", f"WMPO and evaluation ran on world size {d.get('world_size', 1)} (torch.distributed backend "
                      f"{d.get('backend', 'none')}, update strategy {d.get('strategy', '-')})."]
        online = outs.get("baselines", {}).get("online_grpo", {})
        if online:
            lines += [f"Online GRPO sampled its real rollouts and updated on world size {online.get('world_size', 1)}."]
    hist = [upgrade_history_record(h) for h in outs.get("wmpo", {}).get("history", [])]
    real_base = outs.get("wmpo", {}).get("real_eval_base")
    if _plot_curves(hist, out / "wmpo_curves.png", real_base):
        lines += ["", "## WMPO training curves", "", "![WMPO curves](wmpo_curves.png)", ""]
        lines += ["Imagined success is over every imagined trajectory of the iteration, kept or dropped by dynamic sampling "
                  "(an iteration without it is from a run that recorded only the kept groups' rate).", ""]
        lines += ["| iteration | trajectories | imagined success | groups kept / tried | clip fraction | ratio | entropy | "
                  "real success (held-out train states) | rollout s |", "|---|---|---|---|---|---|---|---|---|"]
        if real_base is not None:
            lines.append(f"| 0 (base policy) | - | - | - | - | - | - | {_pct(real_base.get('success_rate'))} | - |")
        for h in hist:
            tried = h.get("groups_tried", 0)
            lines.append(f"| {h['iteration']} | {h['trajectories']} | {_pct(h.get('imagined_success_rate'))} | "
                         f"{tried - h.get('groups_dropped', 0)} / {tried} | {_f(h.get('grpo/clip_frac'), '.3f')} | "
                         f"{_f(h.get('grpo/ratio_mean'), '.3f')} | {_f(h.get('grpo/entropy'), '.3f')} | "
                         f"{_pct(h.get('real/success_rate'))} | {h.get('rollout_seconds', 0):.1f} |")
    vids = sorted(p.relative_to(out) for p in (out / "videos").rglob("*.mp4")) if (out / "videos").is_dir() else []
    if vids:
        lines += ["", "## Videos", "", "Imagined vs real rollouts of the WMPO policy from the same initial state "
                  "(`imagined_vs_real/`: left real simulator, right world model), and sample real evaluation episodes.", ""]
        lines += [f"- [{v}]({v})" for v in vids]
    lines.append("")
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
