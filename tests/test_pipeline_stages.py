"""The stage runner: finished stages are recorded atomically and skipped on resume."""
import json
import os
import subprocess
import sys
import textwrap

from wmpo.pipeline.stages import Stage, StageRunner


def test_finished_stages_are_skipped_and_outputs_restored(tmp_path):
    calls = []

    def a(ctx):
        calls.append("a")
        return {"value": 1}

    def b(ctx):
        calls.append("b")
        raise RuntimeError("crash in b")

    r = StageRunner(tmp_path, log=lambda s: None)
    try:
        r.run([Stage("a", a), Stage("b", b)], None)
    except RuntimeError:
        pass
    assert calls == ["a", "b"]
    assert r.is_done("a") and not r.is_done("b")

    def b_ok(ctx):
        calls.append("b_ok")
        return {"got": r2.outputs["a"]["value"] + 1}

    r2 = StageRunner(tmp_path, log=lambda s: None)
    out = r2.run([Stage("a", a), Stage("b", b_ok)], None)
    assert calls == ["a", "b", "b_ok"]  # a not redone
    assert out["b"] == {"got": 2}
    assert json.loads((tmp_path / "stages" / "b.json").read_text())["outputs"] == {"got": 2}


def test_killed_run_resumes_from_last_finished_stage(tmp_path):
    """A process killed (SIGKILL) inside stage 2 leaves stage 1's marker; the rerun does only stage 2+."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from wmpo.pipeline.stages import Stage, StageRunner
        log = open({str(tmp_path / 'log.txt')!r}, 'a')
        def one(ctx):
            log.write('one\\n'); log.flush(); return {{'x': 1}}
        def two(ctx):
            log.write('two\\n'); log.flush()
            if os.environ.get('KILL'):
                os.kill(os.getpid(), 9)
            return {{'y': 2}}
        StageRunner({str(tmp_path / 'run')!r}, log=lambda s: None).run([Stage('one', one), Stage('two', two)], None)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], env={**os.environ, "KILL": "1"})
    assert p.returncode != 0
    p = subprocess.run([sys.executable, "-c", script], env={k: v for k, v in os.environ.items() if k != "KILL"})
    assert p.returncode == 0
    assert (tmp_path / "log.txt").read_text().split() == ["one", "two", "two"]
