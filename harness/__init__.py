"""robench: an adversarial-robustness benchmarking harness.

The pipeline, one module each: suite (``config``) -> data/model (``data``, ``models``,
``training``) -> defense (``robench.defenses``) -> attacks (``robench.attacks``, evaluated by
``evaluation``) -> rows (``results``) -> leaderboard (``leaderboard``). ``runner`` ties them
together; ``cli`` is the command line.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
