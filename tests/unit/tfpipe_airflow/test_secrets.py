"""No secrets in the repository, and the production config never turns every user into an admin.

The scan is detect-secrets' own (every default plugin and filter, through its Python API; see find_secrets
for the one heuristic the data CSVs go without) over every file git tracks plus the untracked ones git does
not ignore, so a new file with a secret fails before it is committed. A deliberate, harmless value (a
test-only token) is allowlisted where it stands, with `# pragma: allowlist secret` at the end of its line;
there is no baseline file to drift out of date.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings

from tests.conftest import PROJECT_ROOT


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


def repo_files(root: Path) -> list[str]:
    """Files git tracks, plus untracked files it does not ignore (a secret must fail before its commit)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    # A tracked file deleted in the work tree is not there to scan; a symlink's target is scanned as itself
    # when it is in the repository, and is not the repository's content when it is not.
    return sorted(
        name for name in set(listed.split("\0")) if name and (root / name).is_file() and not (root / name).is_symlink()
    )


def is_binary(path: Path) -> bool:
    # Git's own test: a NUL byte in the first 8 KiB. detect-secrets' plugins read text lines only (it drops a
    # file at its first undecodable byte), so skipping these up front loses nothing and avoids reading them.
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def is_scanned(root: Path, name: str) -> bool:
    # requirements*.lock are written by `uv pip compile` from the requirements*.txt files, which are scanned;
    # they hold only pinned names, versions and `# via` comments. detect-secrets skips `.lock` files too.
    # The data CSVs are scanned: they give no false positives, and a CSV can hold a pasted credential.
    return not fnmatch(Path(name).name, "requirements*.lock") and not is_binary(root / name)


def scan(root: Path, files: list[str], *disabled_filters: str) -> list[Finding]:
    if not files:
        return []
    secrets = SecretsCollection(root=str(root))
    with default_settings() as settings:
        settings.disable_filters(*disabled_filters)
        # One process per core (detect-secrets' own pool): the scan is CPU-bound.
        secrets.scan_files(*files)
    return [Finding(path, secret.line_number, secret.type) for path, found in secrets.data.items() for secret in found]


def find_secrets(root: Path) -> list[Finding]:
    """Run detect-secrets over the repository at `root`; every finding, sorted by file and line."""
    files = [name for name in repo_files(root) if is_scanned(root, name)]
    data = [name for name in files if name.endswith(".csv")]
    code = [name for name in files if name not in data]
    # Data rows hold no `x = get_secret(...)` for the indirect-reference heuristic to excuse; it could only
    # hide a finding there, and its regex backtracks on long lines without `=`, doubling the CSVs' scan time.
    data_findings = scan(root, data, "detect_secrets.filters.heuristic.is_indirect_reference")
    return sorted(scan(root, code) + data_findings)


def test_repository_has_no_secrets() -> None:
    findings = find_secrets(PROJECT_ROOT)
    assert not findings, (
        "detect-secrets found possible secrets (the values are not printed):\n"
        + "\n".join(f"  {finding}" for finding in findings)
        + "\nMove a real secret out of the repository (and rotate it). For a deliberate, harmless value such as a"
        " test-only token, end its line with `# pragma: allowlist secret`. detect-secrets reports a value once"
        " per file, so check the file for other lines that hold the same value."
    )


def test_scan_finds_planted_secrets(tmp_path: Path) -> None:
    """The scan is not vacuous: it finds fake credentials in a staged and an untracked file, not in an ignored one."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True)
    # Built at run time so that this file itself holds no literal the scan would flag.
    aws_key = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example access key id
    key_header = "-----BEGIN " + "RSA PRIVATE KEY-----"
    (tmp_path / "settings.env").write_text(f"LOG_LEVEL=INFO\nAWS_ACCESS_KEY_ID={aws_key}\n")
    subprocess.run(["git", "add", "settings.env"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "deploy_key").write_text(f"{key_header}\nMIIEowIBAAKCAQEA\n")
    (tmp_path / ".gitignore").write_text("ignored.env\n")
    (tmp_path / "ignored.env").write_text(f"AWS_ACCESS_KEY_ID={aws_key}\n")

    assert find_secrets(tmp_path) == [
        Finding("keys/deploy_key", 1, "Private Key"),
        Finding("settings.env", 2, "AWS Access Key"),
    ]


# Setting this makes every signed-in user an admin: only the local demo and the tests may.
ALL_ADMINS = "SIMPLE_AUTH_MANAGER_ALL_ADMINS"
DEMO_PATHS = ("Makefile", "scripts/demo.py", "tests/*")
# The forms the repository uses: KEY=True, KEY := True, "KEY": "True", env["KEY"] = "True", setenv("KEY", "True"),
# Dockerfile `ENV KEY true`, and airflow.cfg's `simple_auth_manager_all_admins = True`. Airflow reads t, true
# and 1, in any case, as true.
ALL_ADMINS_ON = re.compile(rf"{ALL_ADMINS}[\"'\]]*\s*(?::=|[=:,]|\s)\s*[\"']?(?:true|t|1)\b", re.IGNORECASE)
ALL_ADMINS_VALUE = re.compile(rf"{ALL_ADMINS}[\"']?\s*[=:]\s*[\"']?([^\"'\s#]*)", re.IGNORECASE)
PRODUCTION_ENV = "deploy/production.env"
# docker/compose.yaml is checked once it exists; deploy/production.env must exist.
PRODUCTION_CONFIGS = (PRODUCTION_ENV, "docker/compose.yaml")


def test_only_demo_paths_make_everyone_admin() -> None:
    offenders = []
    for name in repo_files(PROJECT_ROOT):
        path = PROJECT_ROOT / name
        if any(fnmatch(name, pattern) for pattern in DEMO_PATHS) or is_binary(path):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if ALL_ADMINS_ON.search(line):
                offenders.append(f"{name}:{number}")
    assert not offenders, f"{ALL_ADMINS} is set true outside the demo ({', '.join(DEMO_PATHS)}): {offenders}"


def all_admins_values(path: Path) -> list[tuple[int, str]]:
    """Each line (comments aside) that names the setting, with the value it gives ("" when it gives none)."""
    values = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if ALL_ADMINS in line.upper() and not line.lstrip().startswith("#"):
            match = ALL_ADMINS_VALUE.search(line)
            values.append((number, match.group(1) if match else ""))
    return values


def test_production_config_keeps_all_admins_off() -> None:
    assert (PROJECT_ROOT / PRODUCTION_ENV).is_file(), f"{PRODUCTION_ENV} is missing"
    wrong = []
    for name in PRODUCTION_CONFIGS:
        path = PROJECT_ROOT / name
        if not path.is_file():
            continue
        values = all_admins_values(path)
        if name == PRODUCTION_ENV and not values:
            wrong.append(f"{name}: does not set AIRFLOW__CORE__{ALL_ADMINS}=False")
        # Every mention must be an explicit false: a pass-through of the host's variable or an interpolation
        # with a default (${VAR:-True}) could turn it on.
        wrong += [f"{name}:{number}: {value!r}" for number, value in values if value.lower() not in ("f", "false", "0")]
    assert not wrong, f"production config must set {ALL_ADMINS} false: {wrong}"
