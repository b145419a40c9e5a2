"""Session fixtures of the vLLM tests: the vLLM environment, SmolLM2 as a plain checkpoint,
real prompts, and a way to run the driver in the vLLM environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cachegen

ROOT = Path(__file__).resolve().parents[2]
#: The shared prefix (GPL-3 in a chat turn): 7 whole chunks of 256 tokens, and 14 whole blocks
#: of vLLM's CPU block size (128), so vLLM's own prefix cache splits the prefill where a load does.
PREFIX_TOKENS = 1900
DOCUMENT = Path("/usr/share/common-licenses/GPL-3")
QUESTIONS = [
    "what does this license say about distributing copies?",
    "what are the conditions for conveying modified versions?",
]


@dataclass(frozen=True)
class EngineSetup:
    """An engine's environment running this checkout's cachegen, and its test driver."""

    name: str
    python: Path
    env: dict[str, str]

    def run(self, plan: dict[str, Any], workdir: Path, timeout_s: float) -> dict[str, Any]:
        """Run the engine's driver on `plan` in its environment; its results (fails loudly)."""
        plan_file, out_file = workdir / "plan.json", workdir / "out.json"
        plan_file.write_text(json.dumps(plan))
        log = workdir / f"{self.name}.log"
        driver = Path(__file__).with_name(f"{self.name}_driver.py")
        with log.open("w") as f:
            proc = subprocess.run(
                [str(self.python), str(driver), str(plan_file), str(out_file)],
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                cwd=workdir,
            )
        if proc.returncode != 0:
            tail = log.read_text()[-6000:]
            pytest.fail(f"the {self.name} driver failed ({proc.returncode}):\n{tail}")
        return json.loads(out_file.read_text())


def engine_setup(name: str, tmp_path_factory: pytest.TempPathFactory) -> EngineSetup:
    """Engine `name`'s environment (scripts/envs/NAME.txt; built when absent: minutes, once)
    running this checkout's cachegen. An environment that cannot be built fails the test."""
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "engine_env.sh"), name],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if built.returncode != 0:
        pytest.fail(f"could not set up the {name} environment:\n{built.stderr[-4000:]}")
    venv = Path(built.stdout.strip().splitlines()[-1])
    # The package under test, importable there without installing it (same CPython).
    link = tmp_path_factory.mktemp("pythonpath")
    (link / "cachegen").symlink_to(Path(cachegen.__file__).parent)
    cache = tmp_path_factory.mktemp("cachegen-cache")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(link),
        CACHEGEN_CACHE_DIR=str(cache),
        CACHEGEN_COSTS=str(cache / "costs.json"),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    return EngineSetup(name, venv / "bin" / "python", env)


@pytest.fixture(scope="session")
def vllm_setup(tmp_path_factory: pytest.TempPathFactory) -> EngineSetup:
    """The vLLM environment running this checkout's cachegen."""
    setup = engine_setup("vllm", tmp_path_factory)
    setup.env.update(
        LD_PRELOAD=str(setup.python.parents[1] / "lib" / "libiomp5.so"),
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    return setup


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct written as a plain bf16 Hugging Face checkpoint."""
    from cachegen import smollm2

    folder = tmp_path_factory.mktemp("smollm2")
    smollm2.write_checkpoint(str(folder))
    return folder


@pytest.fixture(scope="session")
def other_checkpoint(smollm2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model: the same weights and served name, another config (its norm epsilon)."""
    folder = tmp_path_factory.mktemp("smollm2-other")
    for f in smollm2_checkpoint.iterdir():
        (folder / f.name).symlink_to(f)
    config = json.loads((smollm2_checkpoint / "config.json").read_text())
    config["rms_norm_eps"] = 2e-5
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def prompts(smollm2_checkpoint: Path) -> dict[str, list[int]]:
    """Two chat prompts sharing a 1,900-token prefix of real text (SmolLM2's own tokenizer)."""
    from cachegen import smollm2

    a, b = smollm2.shared_prefix_prompts(
        str(smollm2_checkpoint), DOCUMENT.read_text(), PREFIX_TOKENS, QUESTIONS
    )
    return {"A": a, "B": b}


@pytest.fixture(scope="session")
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung store)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture(scope="session")
def lmcache_setup(tmp_path_factory: pytest.TempPathFactory) -> EngineSetup:
    """The LMCache environment running this checkout's cachegen."""
    return engine_setup("lmcache", tmp_path_factory)


@pytest.fixture(scope="session")
def sglang_setup(tmp_path_factory: pytest.TempPathFactory) -> EngineSetup:
    """The SGLang environment running this checkout's cachegen."""
    return engine_setup("sglang", tmp_path_factory)
