"""zoo: a cross-domain model zoo for parameter-efficient fine-tuning.

``zoo.run(recipe, overrides, out=...)`` trains and evaluates one recipe and returns its
:class:`~zoo.experiment.Run`; ``zoo.load_run(dir)`` reads a run directory back. The PEFT
engine is :mod:`zoo.peft`.
"""

__version__ = "0.1.0"

__all__ = ["Run", "load_run", "run"]


def __getattr__(name: str):
    # Lazily, so that `import zoo` (and the CLI's start-up) does not import the experiment layer.
    if name in __all__:
        import zoo.experiment

        return getattr(zoo.experiment, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
