"""The Dockerfiles users copy (docker/, examples/) build as written, on supported base images.

No Docker engine runs here, so nothing is built: each Dockerfile is read the way `docker build`
would read it, with the build context its README (or compose file) says to use. Every `COPY`
source must exist in that context and not be excluded by the .dockerignore BuildKit reads, and
every `FROM` must be a base image line still supported today (the table below has the dates).
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import pathlib
import re
import shlex
from dataclasses import dataclass

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
TODAY = datetime.date.today()

# Base image lines and the day their support ends (None: a rolling line, supported while it is
# published). Sources: nodejs.org's release schedule (even majors: 30 months of LTS), Go's
# release policy (a release is supported until the second newer one ships; one ships each
# February and August), devguide.python.org/versions, and distroless' SUPPORT_POLICY.md
# (static-debianN images until a year after Debian N+1's release).
SUPPORTED: dict[tuple[str, str], datetime.date | None] = {
    ("node", "20"): datetime.date(2026, 4, 30),
    ("node", "22"): datetime.date(2027, 4, 30),
    ("node", "24"): datetime.date(2028, 4, 30),
    ("golang", "1.22"): datetime.date(2025, 2, 11),   # Go 1.24's release
    ("golang", "1.25"): datetime.date(2026, 8, 12),   # Go 1.27's release
    ("golang", "1.26"): datetime.date(2027, 2, 28),   # Go 1.28's, planned for February 2027
    ("golang", "1.27"): datetime.date(2027, 8, 31),   # Go 1.29's, planned for August 2027
    ("python", "3.10"): datetime.date(2026, 10, 31),
    ("python", "3.11"): datetime.date(2027, 10, 31),
    ("python", "3.12"): datetime.date(2028, 10, 31),
    ("python", "3.13"): datetime.date(2029, 10, 31),
    ("python", "3.14"): datetime.date(2030, 10, 31),
    ("gcr.io/distroless/static-debian12", ""): datetime.date(2026, 8, 9),  # Debian 13 + 1 year
    ("gcr.io/distroless/static-debian13", ""): None,
    ("rust", "1"): None,
    ("scratch", ""): None,
}
# How much of a tag names the line: node:24-alpine is line 24, golang:1.27.3 line 1.27.
LINE = {"node": r"\d+", "golang": r"\d+\.\d+", "python": r"\d+\.\d+", "rust": r"\d+"}
# The project's own image (docker/Dockerfile), passed as a build argument.
OWN_IMAGES = {"ghcr.io/example/cluster-init"}


def dockerfiles() -> list[pathlib.Path]:
    found = []
    for top in ["docker", "examples"]:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and (path.name == "Dockerfile" or path.name.endswith(".Dockerfile")
                                   or (path.name.startswith("Dockerfile.") and not path.name.endswith(".dockerignore"))):
                found.append(path)
    return found


@dataclass
class Instruction:
    name: str
    args: str


def instructions(path: pathlib.Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, args = pending.strip().partition(" ")
        out.append(Instruction(name.upper(), args.strip()))
        pending = ""
    return out


def from_images(path: pathlib.Path) -> list[str]:
    """Each stage's base image, ARG defaults substituted; stages built FROM earlier stages left out."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for ins in instructions(path):
        if ins.name == "ARG":
            name, _, default = ins.args.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif ins.name == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[0])
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2].lower())
            if image.lower() not in stages:
                images.append(image)
    return images


def copy_sources(path: pathlib.Path) -> list[str]:
    """Sources of COPY and ADD from the build context (not --from= a stage or an image)."""
    sources = []
    for ins in instructions(path):
        if ins.name not in ("COPY", "ADD"):
            continue
        if ins.args.startswith("["):
            words = json.loads(ins.args)
        else:
            words = shlex.split(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources += words[:-1]
    return sources


def build_contexts() -> dict[pathlib.Path, set[pathlib.Path]]:
    """Dockerfile -> the contexts the docs build it with: `docker build` lines of the READMEs under
    docker/ and examples/ (run from the repository root, as they say), and compose files."""
    contexts: dict[pathlib.Path, set[pathlib.Path]] = {}
    for readme in sorted(list((REPO / "docker").rglob("*.md")) + list((REPO / "examples").rglob("*.md"))):
        for line in readme.read_text().splitlines():
            m = re.match(r"^\s*docker (?:buildx )?build (.*)$", line)
            if not m:
                continue
            words = shlex.split(m.group(1).split("#")[0])
            dockerfile, positional, i = None, [], 0
            while i < len(words):
                w = words[i]
                if w in ("-f", "--file"):
                    dockerfile = words[i + 1]
                    i += 2
                elif w in ("-t", "--tag", "--build-arg", "--platform", "--target"):
                    i += 2
                elif w.startswith("-"):
                    i += 1
                else:
                    positional.append(w)
                    i += 1
            assert len(positional) == 1, f"{readme}: {line}"
            context = (REPO / positional[0]).resolve()
            file = (REPO / dockerfile).resolve() if dockerfile else context / "Dockerfile"
            contexts.setdefault(file, set()).add(context)
    for compose in sorted((REPO / "examples").rglob("compose.yaml")):
        for service in (yaml.safe_load(compose.read_text()).get("services") or {}).values():
            build = service.get("build")
            if isinstance(build, dict):
                context = (compose.parent / build.get("context", ".")).resolve()
                file = (context / build.get("dockerfile", "Dockerfile")).resolve()
                contexts.setdefault(file, set()).add(context)
    return contexts


def ignored(dockerignore: pathlib.Path | None, relative: str) -> bool:
    """Whether BuildKit leaves `relative` out of the context: the last pattern matching it or one
    of its parent folders decides, `!` patterns bring files back."""
    if dockerignore is None or not dockerignore.exists():
        return False
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for line in dockerignore.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_for(dockerfile: pathlib.Path, context: pathlib.Path) -> pathlib.Path | None:
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile first, then the context's.
    beside = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return beside if beside.exists() else context / ".dockerignore"


DOCKERFILES = dockerfiles()
CONTEXTS = build_contexts()
ids = [str(p.relative_to(REPO)) for p in DOCKERFILES]


def test_the_dockerfiles_are_found():
    names = {str(p.relative_to(REPO)) for p in DOCKERFILES}
    assert {"docker/Dockerfile", "examples/node/Dockerfile", "examples/go/Dockerfile", "examples/gunicorn/Dockerfile",
            "examples/python/Dockerfile", "examples/jaeger/Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_every_copy_source_is_in_the_build_context_the_docs_use(dockerfile):
    contexts = CONTEXTS.get(dockerfile.resolve())
    assert contexts, f"no README or compose file builds {dockerfile.relative_to(REPO)}: say how to build it"
    for context in contexts:
        for source in copy_sources(dockerfile):
            matches = [p for p in context.glob(source.lstrip("/"))] if any(c in source for c in "*?[") \
                else [context / source] if (context / source).exists() else []
            where = f"{dockerfile.relative_to(REPO)} with context {context.relative_to(REPO) or '.'}"
            assert matches, f"{where}: COPY {source}: no such file in the context"
            for match in matches:
                relative = str(match.relative_to(context))
                assert not ignored(dockerignore_for(dockerfile, context), relative), \
                    f"{where}: COPY {source}: {relative} is excluded by the .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_every_base_image_is_a_supported_line(dockerfile):
    images = from_images(dockerfile)
    assert images, dockerfile
    for image in images:
        name, _, tag = image.partition(":")
        tag = tag.split("@")[0]
        if name in OWN_IMAGES:
            continue
        if name in LINE:
            m = re.match(LINE[name], tag)
            assert m, f"{dockerfile.relative_to(REPO)}: {image}: pin a release line ({name}:<line>-...), not {tag or 'latest'}"
            line = m.group(0)
        else:
            line = ""
        key = (name, line)
        assert key in SUPPORTED, f"{dockerfile.relative_to(REPO)}: {image}: not in this test's table of base images"
        end = SUPPORTED[key]
        assert end is None or end > TODAY, (
            f"{dockerfile.relative_to(REPO)}: {image} is past its end of life ({end}): move to a supported line")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_the_entrypoint_is_exec_form_so_cluster_init_is_pid_1(dockerfile):
    entrypoints = [i.args for i in instructions(dockerfile) if i.name == "ENTRYPOINT"]
    assert entrypoints, dockerfile
    command = json.loads(entrypoints[-1])  # the shell form is no JSON list
    assert "cluster-init" in command[0]
    if len(command) > 1:
        assert "--" in command, f"{dockerfile}: the server's command goes after --"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_npm_ci_has_its_lockfile(dockerfile):
    # `npm ci` without package-lock.json fails (EUSAGE): the old docker/README example did.
    runs = " ".join(i.args for i in instructions(dockerfile) if i.name == "RUN")
    if "npm ci" in runs:
        assert any(fnmatch.fnmatch("package-lock.json", s.split("/")[-1]) for s in copy_sources(dockerfile)), dockerfile


def test_the_tests_own_checks_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM node:20-slim\nARG BASE=golang:1.22\nFROM $BASE AS build\nFROM build\n"
                   "COPY --from=build /x /x\nCOPY package*.json \\\n  ./\nCOPY [\"a b\", \"c\", \"/dst/\"]\n"
                   "ENTRYPOINT cluster-init -- node\n")
    assert from_images(bad) == ["node:20-slim", "golang:1.22"]
    assert copy_sources(bad) == ["package*.json", "a b", "c"]
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("*\n!src\n!examples/node/server.js\n")
    assert ignored(ignore, "target/debug") and ignored(ignore, "examples/go/main.go")
    assert not ignored(ignore, "src/main.rs") and not ignored(ignore, "examples/node/server.js")
    assert SUPPORTED[("node", "20")] < TODAY


def test_docker_readme_complete_example_is_the_node_example_verbatim():
    readme = (REPO / "docker" / "README.md").read_text()
    section = readme.split("## A complete example")[1]
    block = re.search(r"```dockerfile\n(.*?)```", section, re.S).group(1)
    assert block == (REPO / "examples" / "node" / "Dockerfile").read_text()


def test_gunicorn_example_waits_for_its_ready_notification():
    env = " ".join(i.args for i in instructions(REPO / "examples" / "gunicorn" / "Dockerfile") if i.name == "ENV")
    assert "CLUSTER_INIT_READY=notify" in env
    assert "--ready notify" in (REPO / "examples" / "gunicorn" / "README.md").read_text()
