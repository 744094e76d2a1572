"""The root Dockerfile: no Docker engine exists on the CI machine, so the image is not built
here; these checks hold the file to what the charts and the workspace expect."""

import re
import tomllib

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions():
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages():
    current = None
    result = []
    for word, rest in instructions():
        if word == "FROM":
            current = (rest, [])
            result.append(current)
        elif current is not None:
            current[1].append((word, rest))
    return result


def test_multi_stage_build_runs_as_a_non_root_user_with_the_llmd_entrypoint():
    built = stages()
    assert len(built) >= 2, "multi-stage: a build stage and a runtime stage"
    runtime = built[-1][1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"numeric non-root UID (runAsNonRoot needs it): {users[-1]}"
    # The charts run the image as this UID.
    for chart in ("llmd-epp", "llmd-model-server"):
        values = (ROOT / "charts" / chart / "values.yaml").read_text()
        assert f"runAsUser: {uid}" in values, chart
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entry and "llmd" in entry[-1]
    assert not any(word == "FROM" and "rust" in rest for word, rest in runtime)


def test_the_build_stage_builds_the_llmd_binary_from_files_that_exist():
    build_from, build = stages()[0]
    toolchain = re.search(r"rust:(\d+)\.(\d+)", build_from)
    assert toolchain, build_from
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    need = tuple(int(x) for x in manifest["workspace"]["package"]["rust-version"].split(".")[:2])
    assert (int(toolchain[1]), int(toolchain[2])) >= need, "the image's Rust is at least rust-version"
    copies = [rest.split() for word, rest in build if word == "COPY" and "--from" not in rest]
    for args in copies:
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "cargo build --release --locked -p llmd" in runs
    # Every workspace member's manifest is copied (cargo needs the whole workspace).
    copied = {src for args in copies for src in args[:-1]}
    assert "crates" in copied and "Cargo.lock" in copied
