"""The user docs this suite owns: every relative link and every repository path they name
exists, so a renamed file cannot leave a guide pointing nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import packaging_lib as lib

USER_DOCS = ["install", "upgrade", "scaling", "key-source", "client", "metrics", "troubleshooting"]
#: Repository paths the docs mention in backticks, e.g. `deploy/examples/hpa.yaml`.
REPO_PATH = re.compile(r"`((?:charts|deploy|crds|docs|scripts|tests)/[A-Za-z0-9_./-]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("name", USER_DOCS)
def test_every_link_and_path_in_the_user_docs_exists(name: str) -> None:
    doc = lib.REPO_ROOT / "docs" / f"{name}.md"
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if "://" not in target and not (doc.parent / target).exists():
            missing.append(target)
    for path in REPO_PATH.findall(text):
        if not (lib.REPO_ROOT / path.rstrip("/")).exists():
            missing.append(path)
    assert missing == [], f"docs/{name}.md points at missing files: {missing}"


def test_the_minimal_manifest_in_the_install_guide_is_the_example_file() -> None:
    text = (lib.REPO_ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    example = (lib.EXAMPLES_DIR / "wscluster.yaml").read_text(encoding="utf-8")
    assert "# deploy/examples/wscluster.yaml\n" + example in text
