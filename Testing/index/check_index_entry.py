"""Run Slicer/ExtensionsIndex's own ``check_description_files.py`` on MedCLIPSAM.json, offline.

Their checker is taken from a checkout (or bare git dir) of Slicer/ExtensionsIndex and run
unchanged, in a folder holding their description files (for the dependency check: PyTorch) and
ours. Its network calls are served locally, and this script says which:
- ``git clone`` of scm_url: git's ``insteadOf`` points it at a bare copy of this repository whose
  ``main`` is the commit given (default HEAD);
- the JSON schema: read from a Slicer checkout at the URL's path (Schemas/...);
- raw.githubusercontent.com/<scm owner>/<repo>/main/<path> (icon, screenshot): that file at the
  commit, as GitHub serves it once the repository is public;
- api.github.com/repos/<owner>/<repo>/topics: answered with the '3d-slicer-extension' topic,
  which the repository must be given when it is published (the one check not verifiable offline).

    python Testing/index/check_index_entry.py --index /path/to/ExtensionsIndex --slicer /path/to/Slicer
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "MedCLIPSAM.json"

SHIM = '''
import json, os, subprocess
import requests

_get = requests.get
_repo, _owner_repo = os.environ["INDEX_CHECK_REPO"], os.environ["INDEX_CHECK_OWNER_REPO"]
_slicer = os.environ["INDEX_CHECK_SLICER"]
SERVED = []


def _answer(status, body, content_type):
    response = requests.models.Response()
    response.status_code, response._content = status, body
    response.headers["Content-Type"] = content_type
    return response


def _git_show(git_dir, spec):
    return subprocess.run(["git", "--git-dir", git_dir, "show", spec], capture_output=True, check=True).stdout


def get(url, *args, **kwargs):
    raw = "https://raw.githubusercontent.com/"
    if url.startswith(raw + "Slicer/Slicer/main/Schemas/"):
        print(f"[offline] {url} <- Slicer checkout", flush=True)
        return _answer(200, _git_show(_slicer, "HEAD:" + url.split("/main/", 1)[1].split("#")[0]), "text/plain")
    if url.startswith(raw + _owner_repo + "/main/"):
        path = url.split("/main/", 1)[1]
        print(f"[offline] {url} <- {path} at the checked commit", flush=True)
        kind = "image/png" if path.endswith(".png") else "text/plain"
        try:
            return _answer(200, _git_show(_repo, "main:" + path), kind)
        except subprocess.CalledProcessError:
            return _answer(404, b"404: Not Found", "text/plain")
    if url == f"https://api.github.com/repos/{_owner_repo}/topics":
        print(f"[offline] {url} <- topic '3d-slicer-extension' (to be set on GitHub when published)", flush=True)
        return _answer(200, json.dumps({"names": ["3d-slicer-extension"]}).encode(), "application/json")
    raise requests.ConnectionError(f"offline check: no network for {url}")


requests.get = get
'''


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


PY312_ONLY = """print(f"[\\n{'\\n'.join(f'    "{category}",' for category in sorted(extensions_for_categories.keys()))}\\n]")"""
PY311_SAME = """print("[\\n" + "\\n".join(f'    "{category}",' for category in sorted(extensions_for_categories.keys())) + "\\n]")"""


def python311_compatible(source: str) -> str:
    """The checker as is on Python 3.12+; on 3.11 its one 3.12-only f-string (in ``print_categories``, which a
    check never calls) is written the 3.11 way with the same output, and this is said."""
    if sys.version_info >= (3, 12) or PY312_ONLY not in source:
        return source
    print("[python 3.11] print_categories' 3.12-only f-string rewritten with the same output (not used by the checks)")
    return source.replace(PY312_ONLY, PY311_SAME)


def source_git_dir(path: Path) -> str:
    """A git dir for a checkout or a bare repository."""
    return str(path / ".git") if (path / ".git").exists() else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="Slicer/ExtensionsIndex checkout or bare git dir")
    parser.add_argument("--slicer", required=True, help="Slicer/Slicer checkout or bare git dir (for the schema)")
    parser.add_argument("--commit", default="HEAD", help="commit of this repository to check (default HEAD)")
    args = parser.parse_args()
    index, slicer = source_git_dir(Path(args.index)), source_git_dir(Path(args.slicer))
    entry = json.loads(ENTRY.read_text())
    url = entry["scm_url"]
    owner_repo = url.split("github.com/", 1)[1].removesuffix(".git")

    work = Path(tempfile.mkdtemp(prefix="medclipsam-index-check-"))
    try:
        bare = work / "published.git"
        git("clone", "--quiet", "--bare", str(ROOT), str(bare))
        git("--git-dir", str(bare), "branch", "-f", "main", git("rev-parse", args.commit, cwd=ROOT).strip())
        folder = work / "index"
        folder.mkdir()
        names = git("--git-dir", index, "ls-tree", "--name-only", "HEAD").split()
        for name in [n for n in names if n.endswith(".json")]:
            (folder / name).write_bytes(subprocess.run(["git", "--git-dir", index, "show", f"HEAD:{name}"],
                                                       capture_output=True, check=True).stdout)
        checker = folder / "check_description_files.py"
        checker.write_text(python311_compatible(git("--git-dir", index, "show", "HEAD:scripts/check_description_files.py")))
        shutil.copy(ENTRY, folder / ENTRY.name)
        shim = work / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SHIM)
        env = dict(os.environ, PYTHONPATH=str(shim), INDEX_CHECK_REPO=str(bare), INDEX_CHECK_OWNER_REPO=owner_repo,
                   INDEX_CHECK_SLICER=slicer, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.{bare}.insteadOf",
                   GIT_CONFIG_VALUE_0=url)
        done = subprocess.run([sys.executable, checker.name, ENTRY.name], cwd=folder, env=env, text=True,
                              capture_output=True)
        report = [line for line in done.stdout.splitlines() if line.startswith(("- :", ":", "[offline]", "## "))]
        print("\n".join(report))
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
        print(f"check_description_files.py exit code {done.returncode} (index {git('--git-dir', index, 'rev-parse', 'HEAD').strip()[:12]})")
        return done.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
