"""The root Dockerfile, read statically (no container engine runs here): one release build stage,
and per image a final stage (``docker build --target node|proxy|operator .``) on a pinned
distroless base, non-root, whose name the chart and the CRD defaults use."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest

import packaging_lib as lib

#: crate dir (= build target) -> ports the binary listens on by default, per the fixed flag contract
IMAGES = {
    "node": {8080},
    "proxy": {8080, 9090},
    "operator": {7400, 9090},
}
BUILDER = r"docker\.io/library/rust:\$\{RUST_VERSION\}-bookworm"
RUNTIME_BASE = "gcr.io/distroless/cc-debian12:nonroot"


@dataclass
class Stage:
    """One ``FROM … AS name`` stage and its instructions (continuations joined, comments dropped)."""

    base: str
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)


def dockerfile() -> tuple[list[tuple[str, str]], dict[str, Stage]]:
    """The instructions before the first FROM, and the stages by name."""
    text = (lib.REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    preamble: list[tuple[str, str]] = []
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            assert name, f"every stage is named: FROM {rest}"
            assert name not in stages, f"stage {name} defined twice"
            current = stages[name] = Stage(base.strip(), name.strip())
        elif current is None:
            preamble.append((word, rest))
        else:
            current.steps.append((word, rest))
    return preamble, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, base first."""
    out = [stages[name]]
    while out[0].base in stages:
        out.insert(0, stages[out[0].base])
    return out


def package_name(crate: str) -> str:
    with (lib.REPO_ROOT / crate / "Cargo.toml").open("rb") as handle:
        return tomllib.load(handle)["package"]["name"]


def test_one_dockerfile_builds_every_image() -> None:
    for crate in IMAGES:
        assert not (lib.REPO_ROOT / crate / "Dockerfile").exists(), f"{crate}/Dockerfile is replaced by the root one"
    _, stages = dockerfile()
    assert set(IMAGES) <= set(stages), f"targets {sorted(stages)}"
    builders = [s for s in stages.values() if re.fullmatch(BUILDER, s.base)]
    assert [s.name for s in builders] == ["build"], "exactly one build stage, on the pinned Rust image"


def test_the_build_stage_compiles_every_release_binary_against_the_lock_file() -> None:
    _, stages = dockerfile()
    runs = " ".join(args for word, args in stages["build"].steps if word == "RUN")
    assert "cargo build --release --locked" in runs
    for crate in IMAGES:
        binary = package_name(crate)
        assert f"-p {binary} --bin {binary}" in runs
        assert f"/out/{binary}" in runs or "/out/$bin" in runs


@pytest.mark.parametrize("crate", sorted(IMAGES))
def test_each_image_is_its_binary_on_a_distroless_nonroot_base(crate: str) -> None:
    binary = package_name(crate)
    _, stages = dockerfile()
    stack = chain(stages, crate)
    assert stack[0].base == RUNTIME_BASE, f"{crate}: built on {stack[0].base}"
    steps = [step for stage in stack for step in stage.steps]
    words = [w for w, _ in steps]
    assert "RUN" not in words, f"{crate}: the runtime stage has no shell to RUN in"
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1] == "65532:65532", f"{crate}: runs as {users}"
    assert ("COPY", f"--from=build /out/{binary} /usr/local/bin/{binary}") in steps
    copies = [a for w, a in steps if w == "COPY"]
    assert len(copies) == 1, f"{crate}: only its own binary: {copies}"
    assert ("ENTRYPOINT", f'["/usr/local/bin/{binary}"]') in steps
    exposed = {int(p) for w, a in steps if w == "EXPOSE" for p in a.split()}
    assert exposed == IMAGES[crate]
    labels = " ".join(a for w, a in steps if w == "LABEL")
    assert f'org.opencontainers.image.title="{binary}"' in labels
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def test_the_operator_image_runs_the_controller_by_default() -> None:
    _, stages = dockerfile()
    assert ("CMD", '["run"]') in stages["operator"].steps
    assert list(stages)[-1] == "operator", "a plain `docker build .` gives the operator"


def test_the_charts_default_operator_image_is_the_operator_target(chart: Any) -> None:
    image = chart.values["operator"]["image"]["repository"]
    assert image == f"ghcr.io/wscluster/{package_name('operator')}"


def schema_default(crd: dict[str, Any], *path: str) -> Any:
    node = lib.crd_version_schema(crd, "wscluster.io/v1alpha1")
    for name in path:
        node = node["properties"][name]
    return node.get("default")


@pytest.mark.parametrize("crate", ["node", "proxy"])
def test_the_crds_default_node_and_proxy_images_are_their_targets(chart: Any, crd: dict[str, Any], crate: str) -> None:
    expected = f"ghcr.io/wscluster/{package_name(crate)}:{chart.metadata['appVersion']}"
    assert schema_default(crd, "spec", crate, "image") == expected


def test_the_builder_is_at_least_the_workspaces_rust_version() -> None:
    with (lib.REPO_ROOT / "Cargo.toml").open("rb") as handle:
        wanted = tomllib.load(handle)["workspace"]["package"]["rust-version"]
    preamble, _ = dockerfile()
    args = [a for w, a in preamble if w == "ARG" and a.startswith("RUST_VERSION=")]
    assert len(args) == 1, "Dockerfile: expected one ARG RUST_VERSION=<version> before the first FROM"
    builder = args[0].split("=", 1)[1]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(builder) >= as_tuple(wanted)[: len(as_tuple(builder))], f"rust {builder} < rust-version {wanted}"
    assert (lib.REPO_ROOT / "Cargo.lock").is_file(), "--locked needs the committed Cargo.lock"


def test_the_build_context_leaves_out_build_output_and_vcs() -> None:
    ignored = {line.strip() for line in (lib.REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    assert {"target", ".git"} <= ignored
