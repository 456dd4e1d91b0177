"""An installed copy stands alone: the wheel carries the page and the model manifest, and
``voice-agent serve`` run from any directory serves the page."""

from __future__ import annotations

import os
import signal
import site
import socket
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
    )
    (path,) = out.glob("voice_agent-*.whl")
    return path


def test_the_wheel_ships_the_page_and_the_manifest_and_no_bench(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {f"voice_agent/web_client/{f}" for f in (
        "index.html", "app.js", "style.css", "capture-worklet.js", "playback-worklet.js")}  # fmt: skip
    assert page | {"voice_agent/manifest.toml"} <= names
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/", "samples/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(meta).decode()
    # jiwer is for the bench and the tests only: never a runtime requirement
    jiwer = [line for line in requires.splitlines() if line.startswith("Requires-Dist: jiwer")]
    assert jiwer == [
        'Requires-Dist: jiwer==4.0.0; extra == "bench"',
        'Requires-Dist: jiwer==4.0.0; extra == "dev"',
    ]


def test_an_installed_copy_serves_the_page_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the heavy dependencies come from this environment, the package from the wheel
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "deps.pth").write_text(site.getsitepackages()[0] + "\n")  # fmt: skip
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, VOICE_AGENT_LLM_BASE_URL="http://127.0.0.1:9/v1")  # no LLM needed
    proc = subprocess.Popen(
        [str(venv / "bin" / "voice-agent"), "serve", "--port", str(port)],
        cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        page = script = b""
        for _ in range(300):  # up to ~30 s to start
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.js", timeout=5) as r:
            script = r.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert page == (ROOT / "voice_agent" / "web_client" / "index.html").read_bytes()
    assert script == (ROOT / "voice_agent" / "web_client" / "app.js").read_bytes()
