"""The project stands alone: nothing in it reads, imports or links a file outside the repo,
and its lock files are complete (what CI installs is what `make lock` resolved)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

# Files whose text could point somewhere: code, docs, build and CI scripts, deploy examples.
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".in", ".sh", ".service", ".example", ".yml"}
TEXT_NAMES = {"Makefile", "run", "ensure-tools"}
# Spelled in two parts so that this file does not match itself.
OUTSIDE = [
    re.compile(re.escape("shared" + "/")),  # the steering folder beside the repo
    re.compile(re.escape("/wo" + "rk/")),  # an absolute path of this machine
    re.compile(r"\.\./" + r"\.\./"),  # two levels up: out of any folder of ours
]
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
LOCKS = ["sdk", "runner", "service", "dev"]


def _repo_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it
        paths = [p for p in ROOT.rglob("*") if not {".venv", ".git"} & set(p.parts)]
    return [
        p for p in paths
        if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)
    ]


def test_no_file_points_outside_the_repo() -> None:
    files = _repo_files()
    assert any(p.name == "Makefile" for p in files) and len(files) > 50
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(pattern.search(line) for pattern in OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_markdown_links_stay_inside_the_repo() -> None:
    broken = []
    for path in _repo_files():
        if path.suffix != ".md":
            continue
        for target in MD_LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    # (Whether each one leads somewhere is tests/test_docs.py's business.)
    assert not broken, "links that leave the repo:\n" + "\n".join(broken)


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", text, re.MULTILINE))


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_of_a_lock_has_hashes(lock: str) -> None:
    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2].strip())
    assert entries
    for entry in entries:
        assert "==" in entry.splitlines()[0] and "--hash=sha256:" in entry, entry[:200]


def test_locks_agree_and_nest() -> None:
    # One resolution for everyone: a package pinned in two locks has the same version in
    # both, and each user's set is inside the dev set that CI tests.
    pins = {lock: _pins(lock) for lock in LOCKS}
    dev = pins["dev"]
    for lock in ("sdk", "runner", "service"):
        for name, version in pins[lock].items():
            assert dev.get(name) == version, f"{lock}.lock: {name}=={version}, dev.lock differs"
    assert {"httpx", "httpx-sse"} <= set(pins["sdk"])
    assert not {"redis", "aiohttp", "fakeredis", "orjson"} & set(pins["sdk"])
    assert {"redis", "orjson", "hiredis"} <= set(pins["runner"])
    assert not {"aiohttp", "fakeredis"} & set(pins["runner"])
    assert {"aiohttp", "aiohttp-sse", "fakeredis", "lupa", "redis"} <= set(pins["service"])


def test_pyproject_bounds_every_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += [s for s in extra if not s.startswith(project["name"])]
    unbounded = [s for s in specs if "<" not in s.split(";")[0] and "==" not in s]
    assert not unbounded, f"give these an upper bound: {unbounded}"


def _lock_sets() -> dict[str, list[str]]:
    """What each lock must satisfy: the base dependencies plus its extras (self-references
    such as ``mantis-events[runner]`` followed)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]

    def expand(names: list[str]) -> list[str]:
        specs, todo, seen = list(project["dependencies"]), list(names), set()
        while todo:
            extra = todo.pop()
            if extra in seen:
                continue
            seen.add(extra)
            for spec in extras[extra]:
                if spec.startswith(project["name"] + "["):
                    todo += spec[spec.index("[") + 1 : spec.index("]")].split(",")
                else:
                    specs.append(spec)
        return specs

    return {"sdk": expand([]), "runner": expand(["runner"]),
            "service": expand(["service"]), "dev": expand(list(extras))}


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_is_fresh_for_pyproject(lock: str) -> None:
    # A dependency added to pyproject.toml without `make lock` would not be installed by
    # `make install` (it installs the lock, then the project with --no-deps).
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(name): version for name, version in _pins(lock).items()}
    stale = []
    for spec in _lock_sets()[lock]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned, prereleases=True):
            stale.append(f"{spec} (locked: {pinned})")
    assert not stale, f"requirements/{lock}.lock is stale, run `make lock`: {stale}"
