"""The README's Ops example runs as written (the commands of the set-up section are run by
test_scripts.py and the Makefile targets)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(section: str) -> str:
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert blocks, f"README section {section!r} has no python example"
    return blocks[0]


def test_ops_example_runs():
    scope: dict = {}
    exec(compile(_python_block("Ops"), "README.md (Ops)", "exec"), scope)
    assert tuple(scope["out"].shape) == (2, 56, 56, 4, 32)
    assert tuple(scope["rpb"].shape) == (4, 13, 13)
