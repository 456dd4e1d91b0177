"""Where the embedded models come from, and the real code that resolves them.

``voice_agent/manifest.toml`` (package data) pins every file by SHA-256. Model files ship inside
PyPI wheels; files split across wheels are joined once into the cache
directory. Nothing is downloaded at run time: a missing package or a
checksum mismatch is a :class:`ModelError` that names the fix.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from voice_agent.errors import ModelError

INSTALL_FIX = "run `bash scripts/install.sh` (or `voice-agent setup`)"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@cache
def manifest() -> dict[str, Any]:
    default = importlib.resources.files("voice_agent") / "manifest.toml"  # package data
    path = Path(os.environ.get("VOICE_AGENT_MANIFEST") or str(default))
    if not path.exists():
        raise ModelError(f"model manifest not found at {path}", "set VOICE_AGENT_MANIFEST")
    with path.open("rb") as f:
        return tomllib.load(f)


def cache_dir() -> Path:
    root = os.environ.get("VOICE_AGENT_CACHE") or Path.home() / ".cache" / "voice-agent"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str, fix: str = INSTALL_FIX) -> None:
    """Raise :class:`ModelError` unless ``path`` exists and hashes to ``expected``."""
    if not path.exists():
        raise ModelError(f"model file missing: {path}", fix)
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"checksum mismatch for {path.name}: expected {expected[:12]}…, got {actual[:12]}…",
            f"delete it and {fix}",
        )


def module_dir(module: str, package: str, extra: str | None = None) -> Path:
    """Directory of an installed module, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        fix = f"pip install 'voice-agent[{extra}]'" if extra else f"pip install {package}"
        raise ModelError(f"model package {package} is not installed", f"{fix}, or {INSTALL_FIX}")
    return Path(spec.origin).parent


def _entry(section: str, name: str) -> dict[str, Any]:
    entries: dict[str, Any] = manifest().get(section, {})
    if name not in entries:
        known = ", ".join(sorted(entries))
        raise ModelError(f"unknown {section} model {name!r}", f"choose one of: {known}, or a path")
    entry: dict[str, Any] = entries[name]
    return entry


def _assemble(sources: list[Path], dest: Path, expected: str, log: Log) -> Path:
    """Concatenate ``sources`` into ``dest`` once (atomically), then verify it."""
    if dest.exists():
        return dest
    log(f"assembling {dest.name} from {len(sources)} part(s)…")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != expected:
        tmp.unlink()
        raise ModelError(
            f"assembled {dest.name} does not match its pinned SHA-256",
            f"reinstall the model packages: {INSTALL_FIX}",
        )
    tmp.replace(dest)
    return dest


def _source(ref: str, package: str, extra: str | None) -> Path:
    module, rel = ref.split(":", 1)
    return module_dir(module, package, extra) / rel


def whisper_dir(name: str, log: Log = _quiet, check: bool = True) -> Path:
    """A CTranslate2 whisper directory: a manifest name (``tiny-en``, ``base``) or your own path."""
    if Path(name).is_dir():
        return Path(name)
    entry = _entry("stt", name)
    files: dict[str, str] = entry["files"]
    extra = entry.get("extra")
    if "module" in entry:
        directory: Path = module_dir(entry["module"], entry["package"], extra) / entry["dir"]
        if check:
            for fname, sha in files.items():
                verify(directory / fname, sha)
        return directory
    directory = cache_dir() / "stt" / name
    for fname, refs in entry["sources"].items():
        srcs = [_source(r, entry["package"], extra) for r in refs]
        target = directory / fname
        if not target.exists():
            _assemble(srcs, target, files[fname], log)
        elif check:
            verify(target, files[fname])
    return directory


def piper_voice(name: str, check: bool = True) -> tuple[Path, Path]:
    """``(model.onnx, model.onnx.json)``: a manifest name or your own ``.onnx`` path."""
    p = Path(name)
    if p.suffix == ".onnx" and p.exists():
        config = Path(str(p) + ".json")
        if not config.exists():
            raise ModelError(
                f"piper voice config missing: {config}", "put the .onnx.json beside it"
            )
        return p, config
    entry = _entry("tts", name)
    directory = module_dir(entry["module"], entry["package"]) / entry["dir"]
    if check:
        for fname, sha in entry["files"].items():
            verify(directory / fname, sha)
    return directory / entry["model"], directory / entry["config"]


def gguf_path(name: str, log: Log = _quiet) -> tuple[Path, str | None]:
    """``(path, pinned sha256)`` of a GGUF, assembling it from its wheels once.

    A path to your own ``.gguf`` returns ``(path, None)``. The caller checks the
    hash (it is 0.5–1.1 GB, so it is hashed while the server starts).
    """
    p = Path(name)
    if p.suffix == ".gguf" and p.exists():
        return p, None
    entry = _entry("llm", name)
    dest = cache_dir() / "llm" / entry["file"]
    if not dest.exists():
        extra = entry.get("extra")
        srcs = [
            module_dir(entry["parts_module"].format(n=n), entry["package"], extra)
            / entry["parts_file"].format(n=n)
            for n in range(1, int(entry["parts"]) + 1)
        ]
        _assemble(srcs, dest, entry["sha256"], log)
    return dest, str(entry["sha256"])


# -- llama-server, built once per machine ------------------------------------


REDO = "delete it and run `voice-agent setup` again"


def _pip_download(
    requirement: str, path: Path, sha256: str, form: str, what: str, log: Log
) -> Path:
    """One pinned distribution at ``path``, verified: ``pip download`` (without its
    dependencies) when it is not there yet (``form``: ``--only-binary`` for a wheel,
    ``--no-binary`` for an sdist; ``what`` says why, in the log). Setup only."""
    if not path.exists():
        log(f"downloading the {requirement} {what}…")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", form, ":all:", "-d",
             str(path.parent), requirement],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    verify(path, sha256, REDO)
    return path


def smart_turn_path(name: str = "smart-turn-v3", log: Log = _quiet, fetch: bool = False) -> Path:
    """The end-of-turn model's ONNX file in the cache, verified. With ``fetch`` (setup
    only), a missing file is taken out of its pinned wheel: ``pip download --no-deps``
    of that one wheel, its hash checked, the one file extracted and its hash checked.
    The wheel is never installed."""
    entry = _entry("turn", name)
    target = cache_dir() / "turn" / f"{name}.onnx"
    if not target.exists():
        if not fetch:
            raise ModelError(f"end-of-turn model {name} is not set up", INSTALL_FIX)
        wheel = _pinned_wheel(entry, f"wheel (for its {name} model file)", log)
        target.parent.mkdir(parents=True, exist_ok=True)
        _extract(wheel, entry["member"], target, entry["sha256"])
    verify(target, entry["sha256"], REDO)
    return target


def _pinned_wheel(entry: dict[str, Any], what: str, log: Log) -> Path:
    """The manifest entry's pinned wheel in the cache, downloaded once and verified."""
    path = cache_dir() / "wheels" / entry["wheel_file"]
    return _pip_download(entry["wheel"], path, entry["wheel_sha256"], "--only-binary", what, log)


def _extract(wheel: Path, member: str, target: Path, sha256: str) -> None:
    """One file out of a wheel (a zip), written beside ``target`` and moved there only
    once its hash is checked."""
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, partial.open("wb") as out:
        shutil.copyfileobj(src, out)
    verify(partial, sha256, REDO)
    partial.replace(target)


MOONSHINE_GRAPHS = ("encoder_model", "decoder_model_merged")


def is_moonshine(name: str) -> bool:
    """Is ``name`` a Moonshine entry of the manifest (not whisper, not a path)?"""
    entry = manifest().get("stt", {}).get(name)
    return entry is not None and entry.get("kind") == "moonshine"


def moonshine_dir(name: str = "moonshine-base", log: Log = _quiet, fetch: bool = False) -> Path:
    """A Moonshine directory in the cache: ``encoder_model.onnx``,
    ``decoder_model_merged.onnx`` and ``tokenizer.bin``, verified.

    With ``fetch`` (setup only), missing files are made from the pinned wheel:
    ``pip download --no-deps``, its hash checked, the three files extracted and
    their hashes checked, and each ``.ort`` graph converted once to plain ONNX
    (:func:`convert_ort_to_onnx`). The conversion's output hash is written
    beside it and checked at every load. The wheel is never installed."""
    entry = _entry("stt", name)
    files: dict[str, str] = entry["files"]
    directory = cache_dir() / "stt" / name
    targets = [directory / f"{g}.onnx" for g in MOONSHINE_GRAPHS] + [directory / "tokenizer.bin"]
    if not all(t.exists() for t in targets):
        if not fetch:
            raise ModelError(f"STT model {name} is not set up", INSTALL_FIX)
        wheel = _pinned_wheel(entry, f"wheel (for its {name} model files)", log)
        directory.mkdir(parents=True, exist_ok=True)
        for fname, sha in files.items():
            _extract(wheel, entry["member_dir"] + fname, directory / fname, sha)
        for graph in MOONSHINE_GRAPHS:
            log(f"converting {name} {graph}.ort to ONNX (once)…")
            convert_ort_to_onnx(directory / f"{graph}.ort", directory / f"{graph}.onnx")
            (directory / f"{graph}.ort").unlink()
    verify(directory / "tokenizer.bin", files["tokenizer.bin"], REDO)
    for graph in MOONSHINE_GRAPHS:
        onnx_file = directory / f"{graph}.onnx"
        stamp = onnx_file.with_name(onnx_file.name + ".sha256")
        if not stamp.exists():
            raise ModelError(f"{onnx_file} has no recorded hash", REDO)
        verify(onnx_file, stamp.read_text().split()[0], REDO)
    return directory


def convert_ort_to_onnx(source: Path, target: Path) -> None:
    """Rewrite an onnxruntime ``.ort`` graph as plain ONNX, once (setup only).

    Loaded as ``.ort``, onnxruntime keeps each int8 weight's DequantizeLinear in
    the graph and runs it at every decoder step (~50 ms a token here). Saved as
    ONNX and loaded again, its constant folding dequantizes each weight once, at
    load (~7–9 ms a token). onnxruntime writes the graph without optimizing it;
    the ``onnx`` package then names the nested If branches, which the ORT format
    leaves unnamed and the ONNX checker requires."""
    import onnx  # setup only
    import onnxruntime as ort

    raw = target.with_name(target.name + ".raw")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.optimized_model_filepath = str(raw)
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(raw))
    _name_subgraphs(model.graph, target.stem)
    partial = target.with_name(target.name + ".part")
    onnx.save(model, str(partial))
    raw.unlink()
    onnx.checker.check_model(str(partial))
    target.with_name(target.name + ".sha256").write_text(f"{sha256_file(partial)}  {target.name}\n")
    partial.replace(target)


def _name_subgraphs(graph: Any, name: str) -> None:
    if not graph.name:
        graph.name = name
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for i, sub in enumerate(subgraphs):
                _name_subgraphs(sub, f"{name}/{node.name or node.op_type}/{attr.name}{i}")


def _cpu_key() -> str:
    info = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        block = text.split("\n\n", 1)[0]
        info = "\n".join(
            line for line in block.splitlines() if line.startswith(("model name", "flags"))
        )
    except OSError:
        info = platform.processor()
    return hashlib.sha256(f"{platform.machine()}\n{info}".encode()).hexdigest()[:12]


def llama_server_path() -> Path:
    """Where this machine's llama-server binary lives (it may not be built yet)."""
    override = os.environ.get("VOICE_AGENT_LLAMA_SERVER")
    if override:
        return Path(override)
    rt = manifest()["runtime"]["llama-server"]
    version = rt["sdist"].split("==")[1]
    return cache_dir() / "llama.cpp" / f"{version}-{_cpu_key()}" / "llama-server"


def llama_server_binary() -> Path:
    path = llama_server_path()
    if not path.exists():
        raise ModelError(
            f"llama-server is not built on this machine ({path})",
            "run `voice-agent setup` (compiles llama.cpp once, ~7 min on 2 cores), "
            "or point VOICE_AGENT_LLM_BASE_URL at a running OpenAI-compatible server",
        )
    return path


def build_llama_server(log: Log = print, jobs: int | None = None) -> Path:
    """Compile llama-server from the pinned sdist's vendored llama.cpp, once per machine."""
    target = llama_server_path()
    if target.exists():
        return target
    rt = manifest()["runtime"]["llama-server"]
    sdist = _pip_download(
        rt["sdist"], cache_dir() / "sdist" / rt["sdist_file"], rt["sha256"], "--no-binary",
        "source distribution (for llama.cpp's sources)", log,
    )  # fmt: skip
    work = cache_dir() / "llama.cpp" / "src"
    src_root = work / rt["sdist_file"].removesuffix(".tar.gz")
    if not src_root.exists():
        work.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
    if not shutil.which("cmake"):
        raise ModelError("cmake is not installed", "apt-get install cmake g++")
    build = target.parent / "build"
    log(f"building llama-server into {target.parent} (takes several minutes)…")
    subprocess.run(
        ["cmake", "-S", str(src_root / "vendor" / "llama.cpp"), "-B", str(build),
         "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
         # a portable build (for an image that runs on other CPUs) or one tuned to this CPU
         f"-DGGML_NATIVE={'OFF' if os.environ.get('VOICE_AGENT_PORTABLE_BUILD') else 'ON'}"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server",
         "-j", str(jobs or os.cpu_count() or 2)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    shutil.copy2(build / "bin" / "llama-server", target)
    shutil.rmtree(build, ignore_errors=True)
    return target


def setup(
    stt: list[str],
    llm: list[str],
    tts: list[str],
    build: bool = True,
    log: Log = print,
    turn: tuple[str, ...] = ("smart-turn-v3",),
) -> None:
    """Resolve, assemble and verify every named model, and build llama-server."""
    for name in turn:
        log(f"turn {name}: {smart_turn_path(name, log, fetch=True)}")
    for name in stt:
        if is_moonshine(name):
            log(f"stt {name}: {moonshine_dir(name, log, fetch=True)}")
        else:
            log(f"stt {name}: {whisper_dir(name, log)}")
    for name in tts:
        log(f"tts {name}: {piper_voice(name)[0]}")
    for name in llm:
        path, sha = gguf_path(name, log)
        if sha:
            verify(path, sha)
        log(f"llm {name}: {path}")
    if build:
        log(f"llama-server: {build_llama_server(log)}")
