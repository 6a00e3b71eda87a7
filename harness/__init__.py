"""robench: an adversarial-robustness benchmarking harness.

The pipeline, in the order a run goes through it: suite (``config``) -> plan (``plan``,
resolved once) -> data/model (``rundata``, ``data``, ``models``, ``training``) -> defense
(``robench.defenses``) -> attacks (``robench.attacks``, evaluated by ``evaluation``) ->
outcomes (``outcomes``) -> rows (``results``, verified on resume by ``resume``) -> checks
(``robench.checks``) -> leaderboard (``leaderboard``) and report (``robench.report``).
``runner`` starts a run: an executor (``robench.executors``: serial or Ray) runs the tasks
(``tasks``) and reports to the recorder (``recorder``), which writes through the results
folder (``robench.outdir``); ``finalize`` is the one post-run path; ``cli`` is the command
line.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
