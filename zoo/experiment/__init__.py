"""Recipe -> typed config -> built run -> run directory; ``run()`` and ``load_run()`` are the Python API.

::

    import zoo
    run = zoo.run("text/sst2-lora", ["scale=tiny", "method.r=4"], out="runs/try")
    run.status, run.metrics("test")
    same = zoo.load_run("runs/try")
"""

from zoo.experiment.runner import Run, load_run, run

__all__ = ["Run", "load_run", "run"]
