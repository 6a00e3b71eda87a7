"""The overall progress line of ``robench run`` (robench.progress)."""

from robench.progress import Reporter


# -- the overall progress line -----------------------------------------------------------------
def test_overall_line_counts_work_and_is_silent_when_quiet(capsys):
    reporter = Reporter(quiet=False)
    reporter.start_overall(100.0, "suite x")
    reporter.skip(40.0)            # cached: off the total, not done
    reporter.advance(30.0)
    bar = reporter._overall
    assert bar is not None and (bar.n, bar.total) == (30.0, 60.0)
    reporter.advance(45.0)         # float sums never go past the total
    assert bar.n == bar.total == 60.0
    reporter.close_overall()
    assert "suite x" in capsys.readouterr().err

    quiet = Reporter(quiet=True)
    quiet.start_overall(100.0, "suite x")
    quiet.advance(10.0)
    quiet.skip(10.0)
    quiet.close_overall()
    assert capsys.readouterr().err == ""
