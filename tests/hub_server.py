"""A real Hugging Face Hub-protocol server on 127.0.0.1 for the tests: olah (a Hub mirror, `pip install olah`)
serving model repositories from local git mirrors, offline (it never contacts huggingface.co).

`add_model_repo(mirrors, repo_id, folder)` lays a `save_pretrained` folder out as a Hub repository in the mirror folder
olah reads (`<mirrors>/models/<org>/<name>`, a git repository on branch `main`): every file committed, the
`*.safetensors` weights as Git LFS files as on the Hub (a pointer in git, the content under `.git/lfs/objects`, which
is where olah's mirror reads LFS content). `HubServer` starts olah in a subprocess on a free port and stops it; its
`requests()` are the (method, path, status) lines of the server's access log.

olah 0.5.4 answers two things of the Hub protocol differently from the Hub when it serves a local mirror offline, and
huggingface_hub 2.4 / transformers 5.23 depend on both; run as a script, this module serves olah's app behind a small
ASGI layer (`HubProtocolFixes`) that answers those two as the Hub does and passes everything else to olah unchanged:

- a file that is not in the repository (`processor_config.json`, which `AutoImageProcessor` asks for first): olah
  says `401` with `X-Error-Code: RepoNotFound` to `HEAD` and `500` to `GET` (a `KeyError` in its mirror code), so
  huggingface_hub raises `RepositoryNotFoundError` and transformers fails with "... is not a local folder and is not
  a valid model identifier". The Hub says `404` with `X-Error-Code: EntryNotFound` (`RevisionNotFound` for an unknown
  revision), which transformers takes as "this optional file does not exist".
- `GET /api/models/<org>/<name>` (repository info without a revision; transformers 5.23 resolves the revision to a
  commit with it before downloading): olah offline says `401 RepoNotFound`, as it looks for the newest commit only in
  its own cache of huggingface.co. transformers then falls back to downloading by branch name; the layer hands the
  request to olah's own mirror route for the default branch (`.../revision/main`), so the download is pinned to the
  mirror's commit as it is on the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote


ACCESS_LINE = re.compile(r'"(GET|HEAD|POST|PUT|DELETE|PATCH) (\S+) HTTP/[\d.]+" (\d{3})')
GIT_ENV = {
    "GIT_AUTHOR_NAME": "hf_seg tests", "GIT_AUTHOR_EMAIL": "tests@hf-seg.invalid",
    "GIT_COMMITTER_NAME": "hf_seg tests", "GIT_COMMITTER_EMAIL": "tests@hf-seg.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **GIT_ENV})
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def add_model_repo(mirrors: Path, repo_id: str, folder: Path, lfs_patterns=("*.safetensors",)) -> str:
    """Commit the files of `folder` as the model repository `repo_id` of the mirror `mirrors`; returns the commit."""
    org, name = repo_id.split("/")
    repo = Path(mirrors) / "models" / org / name
    repo.mkdir(parents=True)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    lfs_objects = repo / ".git" / "lfs" / "objects"
    for source in sorted(Path(folder).iterdir()):
        target = repo / source.name
        if any(Path(source.name).match(pattern) for pattern in lfs_patterns):
            data = source.read_bytes()
            oid = hashlib.sha256(data).hexdigest()
            stored = lfs_objects / oid[:2] / oid[2:4] / oid
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(data)
            target.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n")
        else:
            shutil.copyfile(source, target)
    (repo / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in lfs_patterns))
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--no-gpg-sign", "-m", f"Upload {name}")
    return _git(repo, "rev-parse", "HEAD")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HubServer:
    """olah on 127.0.0.1 serving `mirrors` offline, started by `start()` and stopped by `stop()`."""

    def __init__(self, mirrors: Path, workdir: Path):
        self.mirrors = Path(mirrors)
        self.workdir = Path(workdir)
        self.process = None
        self.port = None
        self.log_path = self.workdir / "server.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        netloc = f"127.0.0.1:{self.port}"
        # offline: olah never asks upstream; the upstream named is a closed port on this machine all the same
        config = "\n".join([
            "[basic]", 'host = "127.0.0.1"', f"port = {self.port}",
            f"repos-path = {json.dumps(str(self.workdir / 'olah-cache'))}",
            f"mirrors-path = [{json.dumps(str(self.mirrors))}]",
            'hf-scheme = "http"', 'hf-netloc = "127.0.0.1:9"', 'hf-lfs-netloc = "127.0.0.1:9"',
            'mirror-scheme = "http"', f'mirror-netloc = "{netloc}"', f'mirror-lfs-netloc = "{netloc}"',
            "[accessibility]", "offline = true", "",
        ])
        config_path = self.workdir / "olah.toml"
        config_path.write_text(config)
        log = open(self.log_path, "w")  # noqa: SIM115 - the server's stdout and stderr until stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--config", str(config_path), "--log-path", str(self.workdir / "logs")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.workdir), env=env,
        )
        log.close()

    def wait_ready(self, probe_path: str, timeout: float = 120.0) -> None:
        """Until `GET probe_path` answers 200 (the server is up and serves the mirror)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + probe_path, timeout=5) as response:
                    if response.status == 200:
                        return
                    last = response.status
            except (urllib.error.URLError, OSError) as error:
                last = error
            time.sleep(0.2)
        raise TimeoutError(f"the hub server did not answer {probe_path} within {timeout} s ({last}):\n"
                           f"{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request in the access log so far."""
        return [(m[1], unquote(m[2]), int(m[3])) for m in map(ACCESS_LINE.search, self.log().splitlines()) if m]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


class HubProtocolFixes:
    """ASGI layer in front of olah's app: the Hub's answers to the two requests olah 0.5.4 answers otherwise for a
    local mirror (see the module docstring); every other request goes to olah as it came."""

    RESOLVE = re.compile(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)")
    REPO_INFO = re.compile(r"/api/models/([^/]+)/([^/]+)")

    def __init__(self, app, mirrors: list[str]):
        self.app = app
        self.mirrors = [Path(m) for m in mirrors]
        self.repos = {}  # one git.Repo per mirror repository: its `git cat-file` processes serve every request

    def _mirror(self, org: str, name: str):
        import git

        for root in self.mirrors:
            path = root / "models" / org / name
            if (path / ".git").is_dir():
                if path not in self.repos:
                    self.repos[path] = git.Repo(path)
                return self.repos[path]
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            raw = scope.get("raw_path") or scope["path"].encode()
            path = "/".join(unquote(part) for part in raw.decode("latin-1").split("?")[0].split("/"))
            info = self.REPO_INFO.fullmatch(path)
            if info and (repo := self._mirror(info[1], info[2])) is not None:
                branch = repo.head.reference.name
                new_path = f"/api/models/{info[1]}/{info[2]}/revision/{branch}"
                scope = dict(scope, path=new_path, raw_path=new_path.encode())
            resolve = self.RESOLVE.fullmatch(path)
            if resolve and (repo := self._mirror(resolve[1], resolve[2])) is not None:
                error = self._missing(repo, resolve[3], resolve[4])
                if error is not None:
                    return await self._error(send, scope["method"], *error)
        await self.app(scope, receive, send)

    @staticmethod
    def _missing(repo, revision: str, file: str):
        try:
            commit = repo.commit(revision)
        except Exception:  # noqa: BLE001 - gitdb's BadName / BadObject, ValueError
            return "RevisionNotFound", f"Invalid rev id: {revision}"
        try:
            entry = commit.tree[file]
        except KeyError:
            entry = None
        if entry is None or entry.type != "blob":
            return "EntryNotFound", f"Entry not found: {file}"
        return None

    @staticmethod
    async def _error(send, method: str, code: str, message: str):
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-error-code", code.encode()), (b"x-error-message", message.encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def _serve() -> None:
    """olah's own command line (`--config FILE --log-path DIR`), its app served behind `HubProtocolFixes`."""
    import uvicorn
    from olah import server

    args = server.init()
    app = HubProtocolFixes(server.app, server.app.state.app_settings.config.mirrors_path)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", reload=False)


if __name__ == "__main__":
    _serve()
