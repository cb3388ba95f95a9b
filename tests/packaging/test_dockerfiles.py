"""The three Dockerfiles, read statically (no container engine runs here): multi-stage release
builds into a distroless non-root image whose name the chart and the CRD defaults use."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

import packaging_lib as lib

#: crate dir -> (ports the binary listens on by default, per the fixed flag contract)
IMAGES = {
    "node": {8080},
    "proxy": {8080, 9090},
    "operator": {7400, 9090},
}


def instructions(crate: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (lib.REPO_ROOT / crate / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def package_name(crate: str) -> str:
    with (lib.REPO_ROOT / crate / "Cargo.toml").open("rb") as handle:
        return tomllib.load(handle)["package"]["name"]


@pytest.mark.parametrize("crate", sorted(IMAGES))
def test_dockerfile_builds_a_release_binary_into_a_distroless_nonroot_image(crate: str) -> None:
    binary = package_name(crate)
    steps = instructions(crate)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2, f"{crate}: expected a build stage and a runtime stage, got {froms}"
    assert re.fullmatch(r"docker\.io/library/rust:\$\{RUST_VERSION\}-bookworm AS build", froms[0]), froms[0]
    assert froms[1] == "gcr.io/distroless/cc-debian12:nonroot"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert f"cargo build --release --locked -p {binary} --bin {binary}" in runs
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1]:]
    words = [w for w, _ in runtime]
    assert "RUN" not in words, f"{crate}: the runtime stage has no shell to RUN in"
    assert ("USER", "65532:65532") in runtime
    assert ("COPY", f"--from=build /out/{binary} /usr/local/bin/{binary}") in runtime
    assert ("ENTRYPOINT", f'["/usr/local/bin/{binary}"]') in runtime
    exposed = {int(p) for w, a in runtime if w == "EXPOSE" for p in a.split()}
    assert exposed == IMAGES[crate]
    assert f'org.opencontainers.image.title="{binary}"' in " ".join(a for w, a in runtime if w == "LABEL")


def test_the_operator_image_runs_the_controller_by_default() -> None:
    assert ("CMD", '["run"]') in instructions("operator")


def test_the_charts_default_operator_image_is_the_operator_dockerfiles(chart: Any) -> None:
    image = chart.values["operator"]["image"]["repository"]
    assert image == f"ghcr.io/wscluster/{package_name('operator')}"


def schema_default(crd: dict[str, Any], *path: str) -> Any:
    node = lib.crd_version_schema(crd, "wscluster.io/v1alpha1")
    for name in path:
        node = node["properties"][name]
    return node.get("default")


@pytest.mark.parametrize("crate", ["node", "proxy"])
def test_the_crds_default_node_and_proxy_images_are_their_dockerfiles(chart: Any, crd: dict[str, Any], crate: str) -> None:
    expected = f"ghcr.io/wscluster/{package_name(crate)}:{chart.metadata['appVersion']}"
    assert schema_default(crd, "spec", crate, "image") == expected


@pytest.mark.parametrize("crate", sorted(IMAGES))
def test_the_builder_is_at_least_the_workspaces_rust_version(crate: str) -> None:
    with (lib.REPO_ROOT / "Cargo.toml").open("rb") as handle:
        wanted = tomllib.load(handle)["workspace"]["package"]["rust-version"]
    args = [a for w, a in instructions(crate) if w == "ARG" and a.startswith("RUST_VERSION=")]
    assert len(args) == 1, f"{crate}/Dockerfile: expected one ARG RUST_VERSION=<version>"
    builder = args[0].split("=", 1)[1]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(builder) >= as_tuple(wanted)[: len(as_tuple(builder))], f"rust {builder} < rust-version {wanted}"
    assert (lib.REPO_ROOT / "Cargo.lock").is_file(), "--locked needs the committed Cargo.lock"
