"""README.md keeps up with the code: every results.csv column is documented."""

from .conftest import REPO


def test_readme_documents_every_result_column():
    from robench.results import RESULT_COLUMNS

    readme = (REPO / "README.md").read_text()
    section = readme.split("`results.csv` columns:")[1].split("\n\n")[0]
    missing = [c for c in RESULT_COLUMNS if f"`{c}`" not in section and f"{c}" not in section]
    assert not missing, missing
