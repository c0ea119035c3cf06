"""The plain install (no extras): ``ptp`` lists and runs what it can, and names the extra for the rest.

Each check runs the CLI in a fresh interpreter whose import system cannot see Lightning or
datasets (a ``sitecustomize`` hides them from the path finder, so ``find_spec`` returns None and
``import`` fails exactly as when they are not installed), whatever this environment has.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptp.cli import COMMANDS, DISTRIBUTION, EXTRA_MODULES, EXTRA_OF, command_help
from tiny_models import write_student

REPOSITORY = Path(__file__).resolve().parents[1]

HIDE_EXTRAS = '''
import importlib.machinery, sys

HIDDEN = {"lightning", "datasets"}


class HideExtras:
    """The path finder, blind to the packages of the train extra."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):  # importlib.metadata asks the finders too
        found = importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
        return (d for d in found if (d.metadata["Name"] or "").lower() not in HIDDEN)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()


sys.meta_path[:] = [HideExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def hidden_env(tmp_path_factory) -> dict[str, str]:
    """The environment of an interpreter that cannot see the train extra."""
    hook = tmp_path_factory.mktemp("plain-install")
    (hook / "sitecustomize.py").write_text(HIDE_EXTRAS)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def plain(hidden_env):
    """Run ``ptp ARGS`` without the train extra: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        done = subprocess.run([sys.executable, "-c", "import sys; from ptp.cli import main; sys.exit(main())", *args],
                              capture_output=True, text=True, env=hidden_env, timeout=300)
        return done.returncode, done.stdout, done.stderr

    return run


def test_the_hook_hides_the_extras(hidden_env):
    probe = "import importlib.util as u\ntry:\n    import lightning\nexcept ModuleNotFoundError:\n    print(u.find_spec('datasets'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=hidden_env, timeout=60)
    assert (done.returncode, done.stdout) == (0, "None\n"), done.stderr


def test_help_lists_every_command_without_the_extras(plain):
    code, out, err = plain("--help")
    assert code == 0, err
    for name, module in COMMANDS.items():
        assert name in out and command_help(module)[:30] in " ".join(out.split())


def test_generate_and_bench_help_work(plain):
    for command in ("generate", "bench"):
        code, out, err = plain(command, "--help")
        assert code == 0 and "--temperature" in out, err


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "runs/x"], ["distill", "model", "data.jsonl"],
                                  ["pregenerate", "runs/x"]])
def test_commands_of_the_train_extra_name_it_in_one_line(plain, argv):
    code, out, err = plain(*argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"ptp {argv[0]}: error: ")
    assert "pip install -e '.[train]'" in err and f"{DISTRIBUTION}[train]" in err


def test_generate_decodes_without_the_extras(plain, tmp_path):
    student = write_student(tmp_path)
    code, out, err = plain("generate", str(student), "the cat sat", "--max-new-tokens", "3", "--json", "--no-baseline")
    assert code == 0, err
    assert '"tokens"' in out


def test_cli_tables_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "ptp"  # "ptp" on PyPI is an unrelated package
    assert project["scripts"]["ptp"] == "ptp.cli:main"
    extras = project["optional-dependencies"]
    for extra in EXTRA_OF.values():
        assert sorted(m.split(">")[0].split("=")[0] for m in extras[extra]) == sorted(EXTRA_MODULES[extra])
