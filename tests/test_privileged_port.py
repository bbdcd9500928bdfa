"""Binding a port below 1024 without the privilege names the address and the ways out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to take CAP_NET_BIND_SERVICE away")
@pytest.mark.skipif(unprivileged_port_start() <= 25,
                    reason="this kernel lets any user bind low ports")
def test_low_port_without_privilege__clear_error() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mk-lowport-"))
    try:
        config = workdir / "mailkeep.toml"
        config.write_text(f'hostname = "mx.mailkeep.test"\ndata_dir = "{workdir / "data"}"\n'
                          '[listen]\nsmtp = ["127.0.0.1:25"]\n')
        # Root without CAP_NET_BIND_SERVICE in its bounding set is refused low ports like any
        # user, and can still read the project wherever it was cloned.
        result = subprocess.run(
            ["setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service",
             sys.executable, "-m", "mailkeep", "--config", str(config), "serve", "--no-tui"],
            capture_output=True, text=True, timeout=30, cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "cannot listen on 127.0.0.1:25 (smtp): permission denied" in error
    assert "CAP_NET_BIND_SERVICE" in error
    assert "port above 1023" in error
    assert "Traceback" not in result.stderr
