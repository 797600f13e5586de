"""docker/compose.yaml and the images it builds, checked without Docker.

Nothing here builds or starts a container. The compose file is parsed as compose reads it (YAML merge keys,
then `${NAME...}` interpolation), and every service is held to what the repository can show: the files it
mounts, builds and copies exist; its commands are real commands of the runtime it runs (Airflow's own CLI
parser, the stage registry of `python -m tfpipe`, MLflow's server options); its images are pinned; its
secrets come from the environment; and the Airflow settings are deploy/production.env.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import ML_PYTHON, PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PRODUCTION_ENV = PROJECT_ROOT / "deploy" / "production.env"
CONFIG = PROJECT_ROOT / "dags" / "configs" / "chicago_taxi.yaml"

# $$ (a literal $), ${NAME}, ${NAME<op><arg>} with op one of :- - :? ? :+ +, and $NAME.
_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
# Names of secrets (a *_FILE names where one is kept, not the secret).
_SECRET_NAME = re.compile(
    r"^(?!.*_FILE$).*(PASSWORD|SECRET|TOKEN|FERNET|KEY$|CREDENTIAL)|^AIRFLOW_CONN_", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]*:(?P<password>[^@\s]*)@", re.IGNORECASE)
_PINNED_TAG = re.compile(r"^[\w.-]*\d[\w.-]*$")

# Executables of third-party images that the compose file calls, by image repository. Our two images are
# checked against the repository instead (Airflow's CLI, the ML runtime's lock, our packages).
FOREIGN_EXECUTABLES = {
    "postgres": {"pg_isready", "psql", "grep", "sh"},
    "redis": {"redis-cli"},
    "prom/prometheus": {"wget"},
}
# Executables of the official Airflow image besides the ones checked below (airflow, python, celery, bash).
AIRFLOW_IMAGE_EXECUTABLES = {"curl"}
# Shell words that are not a program to look for; the ones in the first set are followed by a command.
_SHELL_PREFIXES = {"do", "then", "else", "exec", "if", "while", "!"}
_SHELL_SKIPPED = {"for", "done", "fi", "set", "exit", "echo", "export", "true", "false", "cd", "test", "["}
_SHELL_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
_REDIRECTIONS = {">", ">>", "<", ">&", "<&"}


# -- the compose file as compose reads it ---------------------------------------------------------------


def interpolate(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Compose's interpolation with `environ` as the environment (default: nothing set).

    An unset required variable (`${NAME:?...}`) becomes `<NAME>`, so required values stay visible.
    """
    environ = environ or {}
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        current = environ.get(name)
        empty = current is None or (current == "" and op.startswith(":"))
        if op.endswith("-"):
            return arg if empty else str(current)
        if op.endswith("?"):
            return f"<{name}>" if empty else str(current)
        if op.endswith("+"):
            return "" if empty else arg
        return current or ""

    return _REFERENCE.sub(substitute, value)


def references(text: str) -> list[tuple[str, str, str]]:
    """(name, op, arg) of every variable reference in `text`."""
    found = []
    for match in _REFERENCE.finditer(text):
        if match.group(0) != "$$":
            found.append(
                (match.group("name") or match.group("bare"), match.group("op") or "", match.group("arg") or "")
            )
    return found


def without_references(text: str) -> str:
    """`text` with every variable reference removed: what the file itself says."""
    return _REFERENCE.sub(lambda match: "$" if match.group(0) == "$$" else "", text)


@functools.cache
def compose_raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and document.get("services"), f"{COMPOSE_FILE} has no services"
    return document


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file with merge keys applied and no variable set (defaults, `<NAME>` for required)."""
    return interpolate(compose_raw())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {str(key): "" if item is None else str(item) for key, item in value.items()}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def env_files(service: dict[str, Any]) -> list[Path]:
    value = service.get("env_file") or []
    entries = [value] if isinstance(value, str | dict) else value
    paths = [entry["path"] if isinstance(entry, dict) else entry for entry in entries]
    return [(DOCKER / path).resolve() for path in paths]


def effective_environment(service: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: its env_files, then `environment` over them."""
    merged: dict[str, str] = {}
    for path in env_files(service):
        merged.update(read_env_file(path))
    merged.update(environment(service))
    return merged


def build_of(service: dict[str, Any]) -> tuple[Path, Path] | None:
    """(context, Dockerfile) of a service that builds its image."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (DOCKER / build.get("context", ".")).resolve()
    return context, (context / build.get("dockerfile", "Dockerfile")).resolve()


def runtime_of(service: dict[str, Any]) -> str:
    """Our two images are `airflow` and `ml`; a third-party image is named by its repository."""
    built = build_of(service)
    if built is not None:
        return {"airflow.Dockerfile": "airflow", "ml.Dockerfile": "ml"}[built[1].name]
    return str(service["image"]).split("@")[0].rsplit(":", 1)[0]


def services_of(runtime: str) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services().items() if runtime_of(service) == runtime}


# -- Dockerfiles ----------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            joined.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context."""
    found = []
    for instruction, arguments in instructions(dockerfile):
        if instruction not in ("COPY", "ADD"):
            continue
        words = shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        found.append((paths[:-1], paths[-1]))
    return found


def base_image(dockerfile: Path) -> str:
    return next(arguments.split()[0] for instruction, arguments in instructions(dockerfile) if instruction == "FROM")


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount; host paths are relative to docker/."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append(((DOCKER / volume["source"]).resolve(), volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append(((DOCKER / source).resolve(), rest.split(":")[0]))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a container path comes from in the repository (a bind mount or a COPY), if it does."""
    path = PurePosixPath(container_path)
    for host, target in bind_mounts(service):
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return host / path.relative_to(target)
    built = build_of(service)
    if built is not None:
        context, dockerfile = built
        for sources, destination in copies(dockerfile):
            if len(sources) == 1 and (path == PurePosixPath(destination) or PurePosixPath(destination) in path.parents):
                return context / sources[0] / path.relative_to(destination)
    return None


# -- commands -------------------------------------------------------------------------------------------


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def service_argvs(name: str, service: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(what, argv) of each command the service runs: its main process and its healthcheck."""
    argvs = []
    entrypoint, command = as_argv(service.get("entrypoint")), as_argv(service.get("command"))
    if entrypoint:
        argvs.append((f"{name}: entrypoint and command", entrypoint + command))
    elif command and runtime_of(service) == "airflow":
        # The official image's entrypoint runs bash and python as they are, anything else as `airflow ...`.
        argvs.append(
            (f"{name}: command", command if command[0] in ("bash", "python", "airflow") else ["airflow", *command])
        )
    elif command:
        argvs.append((f"{name}: command", command))
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if test and test[0] == "CMD":
        argvs.append((f"{name}: healthcheck", list(test[1:])))
    elif test and test[0] == "CMD-SHELL":
        argvs.append((f"{name}: healthcheck", ["sh", "-c", test[1]]))
    return argvs


def script_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, without redirections, assignments and shell keywords."""
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in _SHELL_SEPARATORS:
                segment.append(token)
                continue
            words = []
            skip_next = False
            for word in segment:
                if skip_next:
                    skip_next = False
                elif word in _REDIRECTIONS:
                    skip_next = True
                else:
                    words.append(word)
            while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in _SHELL_PREFIXES):
                words.pop(0)
            if words and words[0] not in _SHELL_SKIPPED:
                found.append(words)
            segment = []
    return found


@functools.cache
def airflow_parser() -> Any:
    from airflow.cli.cli_parser import get_parser

    return get_parser()


@functools.cache
def mlflow_options(command: str) -> frozenset[str] | None:
    """The options of `mlflow COMMAND`, asked of the ML runtime's MLflow; None: no such command."""
    assert ML_PYTHON.exists(), "the ML runtime is missing: run `make install`"
    code = (
        "import json, sys\nfrom mlflow.cli import cli\ncommand = cli.commands.get(sys.argv[1])\n"
        "print(json.dumps(command and [opt for p in command.params for opt in (*p.opts, *p.secondary_opts)]))"
    )
    done = subprocess.run([str(ML_PYTHON), "-c", code, command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout.strip().splitlines()[-1])
    return None if options is None else frozenset(options)


def locked_packages(lock: Path) -> set[str]:
    return {
        line.split("==")[0].lower() for line in lock.read_text().splitlines() if "==" in line and line[:1].isalnum()
    }


def check_python(argv: list[str], runtime: str, problems: list[str], what: str) -> None:
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        problems.append(f"{what}: python is run as neither `python -m MODULE` nor `python -c CODE`: {argv}")
        return
    if argv[1] == "-c":
        try:
            tree = ast.parse(argv[2])
        except SyntaxError as exc:
            problems.append(f"{what}: python -c code does not compile: {exc}")
            return
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in ("tfpipe", "tfpipe_airflow")
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        problems.append(f"{what}: {node.module} has no {alias.name}")
        return
    module, arguments = argv[2], argv[3:]
    packages = {"airflow": ("tfpipe", "tfpipe_airflow"), "ml": ("tfpipe",)}[runtime]
    top = module.split(".")[0]
    if top in ("tfpipe", "tfpipe_airflow"):
        if top not in packages:
            problems.append(f"{what}: {top} is not installed in the {runtime} image")
            return
        folder = PROJECT_ROOT / ("include" if top == "tfpipe" else "plugins")
        base = folder.joinpath(*module.split("."))
        if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
            problems.append(f"{what}: no module {module} in {folder.relative_to(PROJECT_ROOT)}")
            return
    elif runtime != "airflow" or importlib.util.find_spec(module) is None:
        problems.append(f"{what}: module {module} is not one the {runtime} image has")
        return
    if module == "tfpipe":
        from tfpipe.stages import STAGES, _parser

        if not arguments or arguments[0] not in STAGES:
            problems.append(f"{what}: {arguments[:1]} is not a stage of `python -m tfpipe` ({sorted(STAGES)})")
            return
        try:
            _parser(arguments[0]).parse_args(arguments)
        except SystemExit:
            problems.append(f"{what}: `python -m tfpipe` refuses the arguments {arguments}")


def check_argv(argv: list[str], runtime: str, problems: list[str], what: str) -> None:
    executable = argv[0]
    if executable in ("sh", "bash", "/bin/sh", "/bin/bash") and runtime in ("airflow", "ml", "postgres"):
        if len(argv) >= 3 and argv[1] == "-c":
            for command in script_commands(argv[2]):
                check_argv(command, runtime, problems, what)
        else:
            problems.append(f"{what}: a shell without `-c SCRIPT`: {argv}")
    elif executable == "python" and runtime in ("airflow", "ml"):
        check_python(argv, runtime, problems, what)
    elif executable == "airflow" and runtime == "airflow":
        if len(argv) > 1:
            try:
                airflow_parser().parse_args(argv[1:])
            except SystemExit:
                problems.append(f"{what}: `{shlex.join(argv)}` is not a command of Airflow's CLI")
    elif executable == "celery" and runtime == "airflow":
        from celery.bin.celery import celery

        if "--app" not in argv:
            problems.append(f"{what}: celery without --app")
            return
        app = argv[argv.index("--app") + 1]
        if importlib.util.find_spec(app.rpartition(".")[0] or app) is None:
            problems.append(f"{what}: the Celery app {app!r} is not in a module of the Airflow runtime")
        rest = argv[argv.index(app) + 1 :]
        if not rest or rest[0] not in celery.commands:
            problems.append(f"{what}: {rest[:1]} is not a celery command")
    elif executable == "mlflow" and runtime == "ml":
        if "mlflow" not in locked_packages(PROJECT_ROOT / "requirements-ml.lock"):
            problems.append(f"{what}: mlflow is not in requirements-ml.lock")
            return
        options = mlflow_options(argv[1]) if len(argv) > 1 else None
        if options is None:
            problems.append(f"{what}: {argv[1:2]} is not an mlflow command")
            return
        unknown = {word.split("=")[0] for word in argv[2:] if word.startswith("--")} - options
        if unknown:
            problems.append(f"{what}: `mlflow {argv[1]}` has no options {sorted(unknown)}")
    elif executable not in {"airflow": AIRFLOW_IMAGE_EXECUTABLES, **FOREIGN_EXECUTABLES}.get(runtime, set()):
        problems.append(f"{what}: {executable!r} is not a program the {runtime} image has")


def path_arguments(argv: list[str]) -> list[str]:
    """Absolute container paths named by a command, in words, `--option=value` forms and scripts."""
    words = []
    for word in argv:
        try:
            words.extend(shlex.split(word))
        except ValueError:  # code with unbalanced quotes: its words are enough
            words.extend(word.split())
    return [value for word in words for value in [word.split("=", 1)[-1]] if value.startswith("/")]


# -- tests ----------------------------------------------------------------------------------------------


def test_the_airflow_services_take_their_settings_from_the_production_env_and_every_env_file_exists():
    airflow = services_of("airflow")
    assert {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker"} <= set(airflow)
    for name, service in airflow.items():
        assert env_files(service) == [PRODUCTION_ENV], f"{name} does not read deploy/production.env"
    for name, service in services().items():
        for path in env_files(service):
            assert path.is_file(), f"{name}: env_file {path} does not exist"


def test_builds_name_an_existing_context_and_dockerfile():
    built = {name: build_of(service) for name, service in services().items() if build_of(service) is not None}
    assert {runtime_of(services()[name]) for name in built} == {"airflow", "ml"}
    for name, (context, dockerfile) in built.items():
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_every_bind_mount_exists_and_every_named_volume_is_declared():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for host, target in bind_mounts(service):
            assert host.exists(), f"{name}: bind mount {host} (for {target}) does not exist"
            assert PROJECT_ROOT in (host, *host.parents), f"{name}: {host} is outside the repository"
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: named volume {source} is not declared"


def test_every_file_the_dockerfiles_copy_exists():
    for name, service in services().items():
        built = build_of(service)
        if built is None:
            continue
        context, dockerfile = built
        assert copies(dockerfile), f"{dockerfile.name} copies nothing"
        for sources, destination in copies(dockerfile):
            for source in sources:
                assert (context / source).exists(), f"{name}: {dockerfile.name} copies {source}, which does not exist"
            assert destination.startswith("/"), f"{dockerfile.name}: COPY to a relative {destination}"


def test_every_image_is_pinned_to_a_version():
    images = {name: str(service["image"]) for name, service in services().items()}
    images.update(
        {dockerfile.name: base_image(dockerfile) for _, dockerfile in filter(None, map(build_of, services().values()))}
    )
    for name, image in images.items():
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and _PINNED_TAG.match(tag), f"{name}: image {image} is not pinned to a version"


def test_the_images_use_the_installed_airflow_and_the_locked_python():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (dockerfile,) = {build_of(service)[1] for service in services_of("airflow").values()}
    assert base_image(dockerfile) == f"apache/airflow:{importlib.metadata.version('apache-airflow')}-python{python}"
    (ml_dockerfile,) = {build_of(service)[1] for service in services_of("ml").values()}
    assert base_image(ml_dockerfile).startswith(f"python:{python}-"), "the ML image runs another Python"


def test_every_command_is_a_real_command_of_its_image():
    problems: list[str] = []
    for name, service in services().items():
        runtime = runtime_of(service)
        for what, argv in service_argvs(name, service):
            if argv[0].startswith("-") and runtime in FOREIGN_EXECUTABLES:
                continue  # options to the image's own entrypoint (Prometheus)
            check_argv(argv, runtime, problems, what)
    assert not problems, "\n".join(problems)


def named_volume_targets(service: dict[str, Any]) -> list[str]:
    targets = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "volume":
                targets.append(volume["target"])
        elif not volume.startswith((".", "/", "~")):
            targets.append(volume.split(":")[1])
    return targets


def test_every_repository_path_a_command_names_exists():
    checked = 0
    for name, service in services().items():
        volumes = [PurePosixPath(target) for target in named_volume_targets(service)]
        for what, argv in service_argvs(name, service):
            for path in path_arguments(argv):
                found = host_path(service, path)
                if found is not None:
                    checked += 1
                    assert found.exists(), f"{what}: {path} would be {found}, which does not exist"
                elif path.startswith("/opt/"):
                    # Where our files live in the images: what is not copied or mounted there is missing.
                    inside = any(
                        volume == PurePosixPath(path) or volume in PurePosixPath(path).parents for volume in volumes
                    )
                    assert inside, f"{what}: {path} is neither copied into the image nor mounted"
    assert checked >= 3, "no command names a file of the repository: the check is not looking"


def test_the_commands_that_must_be_there_are():
    commands = {
        name: " ".join(argv) for name, service in services().items() for _, argv in service_argvs(name, service)[:1]
    }
    assert commands["airflow-apiserver"] == "airflow api-server"
    assert commands["airflow-worker"] == "airflow celery worker"
    assert "airflow db migrate" in commands["airflow-init"]
    assert "python -m tfpipe_airflow.pools /opt/airflow/dags/configs" in commands["airflow-init"]
    assert "airflow pools import" in commands["airflow-init"]
    assert commands["model-server"].startswith(
        "python -m tfpipe serve --config /opt/tfpipe/dags/configs/chicago_taxi.yaml"
    )
    # Before the first deployment the registry has no champion: the server must start all the same.
    assert "--from-registry champion --or-empty" in commands["model-server"]
    assert commands["mlflow"].startswith("mlflow server ")
    assert "--no-serve-artifacts" in commands["mlflow"]


def test_secrets_come_from_the_environment_only():
    problems = []
    for name, op, arg in references(COMPOSE_FILE.read_text()):
        if _SECRET_NAME.search(name) and not (op.endswith("?") or (op.endswith("-") and arg == "")):
            problems.append(f"${{{name}}} is a secret with a default or none required: use ${{{name}:?...}}")

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                # A secret's value is a reference alone; connections are checked as URLs and JSON below.
                secret = _SECRET_NAME.search(str(key)) and not str(key).startswith("AIRFLOW_CONN_")
                if secret and isinstance(item, str) and without_references(item).strip():
                    problems.append(f"{where}.{key} holds a literal secret")
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")
        elif isinstance(value, str):
            literal = without_references(value)
            if any(match.group("password") for match in _URL_PASSWORD.finditer(literal)):
                problems.append(f"{where}: a URL with a literal password")
            try:
                document = json.loads(literal)
            except ValueError:
                document = None
            if isinstance(document, dict):
                for key, item in document.items():
                    if _SECRET_NAME.search(key) and item:
                        problems.append(f"{where}: JSON with a literal {key}")

    walk(compose_raw()["services"], "services")
    for key, value in read_env_file(PRODUCTION_ENV).items():
        if _SECRET_NAME.search(key) or key.endswith(("SQL_ALCHEMY_CONN", "BROKER_URL", "RESULT_BACKEND")):
            problems.append(f"deploy/production.env sets {key}: secrets come from the environment")
        if any(match.group("password") for match in _URL_PASSWORD.finditer(value)):
            problems.append(f"deploy/production.env: {key} holds a URL with a password")
    assert not problems, "\n".join(problems)
    # The required ones really are required: with nothing set, they stay unresolved.
    airflow_env = effective_environment(services()["airflow-worker"])
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert airflow_env[key] == f"<{key}>", f"{key} is not required from the environment"
    assert "<POSTGRES_PASSWORD>" in airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert environment(services()["model-server"])["TFPIPE_SERVING_ADMIN_TOKEN"] == "<TFPIPE_SERVING_ADMIN_TOKEN>"


def _config_under(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from tfpipe.config import load_pipeline_config

    for key, value in env.items():
        if key.startswith(("TFPIPE_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    return load_pipeline_config(CONFIG)


def test_ml_stages_run_in_the_ml_image_never_in_the_airflow_image(monkeypatch):
    from tfpipe.config import ExecutionConfig

    modes = ExecutionConfig.model_fields["mode"].annotation.__args__
    airflow = services_of("airflow")
    for name, service in airflow.items():
        mode = effective_environment(service).get("TFPIPE_EXECUTION_MODE", "local")
        # `local` runs the stage as a subprocess of the ML runtime, which the Airflow image does not hold.
        assert mode in modes and mode != "local", f"{name}: execution mode {mode!r} cannot run a stage here"
    (dockerfile,) = {build_of(service)[1] for service in airflow.values()}
    copied = {source for sources, _ in copies(dockerfile) for source in sources}
    steps = " ".join(arguments for _, arguments in instructions(dockerfile)).lower()
    assert "requirements-ml.lock" not in copied and "tensorflow" not in steps
    config = _config_under(effective_environment(airflow["airflow-worker"]), monkeypatch)
    assert config.execution.mode != "local"
    if config.execution.mode == "kubernetes":
        # The pods run the image this file builds for the model server and MLflow.
        assert {service["image"] for service in services_of("ml").values()} == {config.execution.kubernetes.image}


def test_every_connection_the_pipeline_and_the_bundle_use_is_defined(monkeypatch):
    worker = effective_environment(services()["airflow-worker"])
    config = _config_under(worker, monkeypatch)
    execution = getattr(config.execution, config.execution.mode)
    conn_ids = {
        config.serving.local.conn_id,
        config.quota.ledger.conn_id,
        config.alerts.smtp_conn_id,
        getattr(execution, "kubernetes_conn_id", None) or getattr(execution, "gcp_conn_id", None),
    }
    bundles = json.loads(read_env_file(PRODUCTION_ENV)["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    conn_ids |= {bundle["kwargs"]["git_conn_id"] for bundle in bundles if "git_conn_id" in bundle.get("kwargs", {})}
    for name, service in services_of("airflow").items():
        env = effective_environment(service)
        missing = {conn_id for conn_id in conn_ids if f"AIRFLOW_CONN_{conn_id.upper()}" not in env}
        assert not missing, f"{name} lacks the connections {sorted(missing)}"
    for key in (
        "AIRFLOW_CONN_TFPIPE_DAG_BUNDLE",
        "AIRFLOW_CONN_TFPIPE_MODEL_SERVER",
        "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER",
    ):
        json.loads(worker[key])  # each is a JSON connection once interpolated
    # The model server connection leads to the model-server service, on the port it listens on.
    server = json.loads(worker["AIRFLOW_CONN_TFPIPE_MODEL_SERVER"])
    argv = service_argvs(server["host"], services()[server["host"]])[0][1]
    assert argv[argv.index("--port") + 1] == str(server["port"])
    assert server["password"] == "<TFPIPE_SERVING_ADMIN_TOKEN>"
    assert config.serving.local.admin_token_env in environment(services()[server["host"]])


def test_prometheus_scrapes_compose_services_on_the_ports_they_serve():
    (prometheus,) = services_of("prom/prometheus").values()
    argv = as_argv(prometheus.get("command"))
    config_file = next(word.split("=", 1)[1] for word in argv if word.startswith("--config.file="))
    scrape = yaml.safe_load(host_path(prometheus, config_file).read_text())
    targets = [
        target for job in scrape["scrape_configs"] for group in job["static_configs"] for target in group["targets"]
    ]
    assert targets
    for target in targets:
        host, _, port = target.partition(":")
        assert host in services(), f"Prometheus scrapes {host}, which is not a service of the compose file"
        served = service_argvs(host, services()[host])[0][1]
        assert "--port" in served and served[served.index("--port") + 1] == port, f"{host} does not listen on {port}"
