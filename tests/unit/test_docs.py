"""The docs that can be generated are, and match the code."""
import os
import re

from mpisgd import algorithms
from mpisgd.app.docs import options_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_options_md_is_generated_from_the_registry():
    assert read("docs/options.md") == options_markdown(), \
        "docs/options.md is stale: python -m mpisgd.app.docs > docs/options.md"


def test_user_guide_names_every_algorithm():
    guide = read("docs/user-guide.md")
    for name in algorithms.ALGORITHMS:
        assert f"`{name}`" in guide, name


def test_no_doc_cites_a_file_that_is_not_in_the_repo():
    for folder in ("docs", "."):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if not name.endswith(".md"):
                continue
            text = read(os.path.join(folder, name))
            for cited in re.findall(r"\]\(([^)#:]+\.(?:md|py|yaml|sh|sbatch))\)", text):
                path = os.path.normpath(os.path.join(ROOT, folder, cited))
                assert os.path.exists(path), f"{folder}/{name} links to {cited}"
            assert "DESIGN.md" not in text, f"{folder}/{name} cites DESIGN.md (not in the repo)"


def test_readme_table_lists_every_algorithm():
    readme = read("README.md")
    table = readme[readme.index("## Algorithms"):readme.index("Every algorithm takes")]
    for name in algorithms.ALGORITHMS:
        assert f"`{name}`" in table, name


def test_every_recipe_is_a_valid_study_of_4_ranks(tmp_path):
    """docs/recipes/*.yaml load and expand as grids (every configuration validated), on the
    4 ranks make recipes gives them, and the README lists each."""
    import glob
    from mpisgd.app import grid
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "recipes", "*.yaml")))
    assert len(files) == 4
    index = read("docs/recipes/README.md")
    makefile = read("Makefile")
    for path in files:
        tasks = grid.expand(*grid.load(path), str(tmp_path))
        assert tasks and all(t.ranks == 4 for t in tasks), path
        name = os.path.basename(path)
        assert f"]({name})" in index and name[:-5] in makefile, name
