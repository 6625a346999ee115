"""The installed package is the same package as the source tree, wherever a script runs from.

kernels/ is installed as fusedloss.kernels through a package-dir mapping; a regular (non-editable) install
imported from the checkout's root finds the source fusedloss/ first (the working directory leads
sys.path), which has no kernels/ of its own: fusedloss/__init__.py then adds the tree's root to the
package's search path. Built and installed for real: a wheel, installed with --no-deps into a fresh
virtual environment that sees this environment's torch and triton but not its editable install.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPORT_ALL = """
import importlib, pkgutil, fusedloss, fusedloss.kernels
names = [m.name for m in pkgutil.walk_packages(fusedloss.__path__[:1], "fusedloss.")]
names += [m.name for m in pkgutil.walk_packages(fusedloss.kernels.__path__, "fusedloss.kernels.")]
for name in sorted(set(names)):
    importlib.import_module(name)
print(fusedloss.__file__)
print(fusedloss.kernels.__file__)
print(len(names))
"""


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources, and test workers
    # may build at once
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", "results"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(source)], check=True, capture_output=True)
    wheel, = (tmp / "dist").glob("fusedloss-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages (torch, triton), as a plain path: its .pth files (the editable
    # install of this checkout among them) are not processed from there
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site,
                    str(wheel)], check=True, capture_output=True)
    return python, site


def _import_everything(python, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", IMPORT_ALL], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], out[1], int(out[2])


def test_installed_wheel_imports_everything_from_elsewhere(fresh_env, tmp_path):
    python, site = fresh_env
    package, kernels, count = _import_everything(python, tmp_path)
    assert package.startswith(site) and kernels.startswith(os.path.join(site, "fusedloss", "kernels"))
    assert count >= 15


def test_installed_wheel_imports_everything_from_the_source_root(fresh_env):
    """The checkout shadows the installed package (cwd first): the checkout's own kernels/ serve it."""
    python, _ = fresh_env
    package, kernels, count = _import_everything(python, ROOT)
    assert package == os.path.join(ROOT, "fusedloss", "__init__.py")
    assert kernels == os.path.join(ROOT, "kernels", "__init__.py")
    assert count >= 15
