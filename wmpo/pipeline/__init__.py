"""`wmpo run`: the whole WMPO pipeline for one task and preset, resumable stage by stage."""


def main(argv=None):
    from wmpo.pipeline.run import main as _main

    return _main(argv)


def run_pipeline(*args, **kwargs):
    from wmpo.pipeline.run import run_pipeline as _run

    return _run(*args, **kwargs)
