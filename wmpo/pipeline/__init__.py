"""`wmpo run`'s library side: the pipeline's stages, each calling the library (argument parsing:
wmpo.cli.run)."""


def run_pipeline(*args, **kwargs):
    from wmpo.pipeline.run import run_pipeline as _run

    return _run(*args, **kwargs)
