"""The project's own documents agree with the code: README's commands and knobs table."""

import re
from pathlib import Path

from finecontrol.settings import Settings, knobs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    block = README.split("Install and run the tests")[1].split("```bash\n")[1].split("\n```")[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert block.strip() == ci[-1].strip()


def test_readme_knobs_table_names_every_setting_with_its_flag_and_default():
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    paper = Settings()
    for name, knob in knobs().items():
        row = next((r for r in rows if re.match(rf"\| [^|]*`{name}`", r)), None)
        assert row is not None, f"README's knobs table has no row for {name}"
        assert f"`--{knob.flag}`" in row, f"README's row for {name} does not name --{knob.flag}"
        default = getattr(paper, name)
        if knob.kind in ("int", "number") and default is not None and name != "seed":
            assert f"| {default} |" in row, f"README's row for {name} does not give its default {default}"
