"""Every usage-error code the library can raise is explained in docs/errors.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_usage_error_code_is_documented() -> None:
    raised = {
        code
        for path in (ROOT / "src" / "cqrs_kit").rglob("*.py")
        for code in re.findall(r'code="([a-z-]+)"', path.read_text())
    }
    documented = set(
        re.findall(r"`([a-z]+(?:-[a-z]+)+)`", (ROOT / "docs" / "errors.md").read_text())
    )
    assert raised, "no codes found: the pattern no longer matches the source"
    assert sorted(raised - documented) == []
