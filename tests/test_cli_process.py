"""The `dyllm` command as a real process, where the in-process tests of `test_bad_inputs.py` can
only simulate: Ctrl-C (SIGINT), a reader that closes the pipe, a full disk, argv and stdin bytes
that are not UTF-8. Each starts Python and imports torch (seconds), so they are `slow`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DYLLM = [sys.executable, "-m", "dyllm.cli"]
TASK = "sort 3141592653589793 ="


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*DYLLM, *argv], env=ENV, capture_output=True, timeout=300, **kwargs)


def test_ctrl_c_ends_with_one_line_and_status_130() -> None:
    process = subprocess.Popen(
        [*DYLLM, "generate", "--prompts-file", "-", "--no-progress"],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(f"{TASK}\n".encode() * 2000)
    process.stdin.close()
    process.stdin = None  # closed: communicate() must not flush it
    time.sleep(8)  # past the imports and the load: inside the generation
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.decode().strip() == "dyllm generate: interrupted"


def test_a_closed_pipe_ends_quietly() -> None:
    process = subprocess.Popen(
        [*DYLLM, "info", "llada-ref"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader is gone before anything is written
    err = process.stderr.read() if process.stderr is not None else b""
    assert process.wait(timeout=120) == 141
    assert err == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_ends_with_one_line() -> None:
    with open("/dev/full", "w") as full:
        completed = subprocess.run(
            [*DYLLM, "generate", TASK, "--no-progress"],
            env=ENV,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    assert completed.returncode == 1
    assert completed.stderr.decode().strip().splitlines() == [
        "dyllm generate: error: [Errno 28] No space left on device"
    ]


def test_bytes_that_are_not_utf8_are_refused_in_one_line() -> None:
    completed = _run(["generate", os.fsdecode(b"sort \xff =")])
    assert completed.returncode == 2
    assert completed.stderr.decode().count("\n") == 1
    assert "prompt 0 is not valid text" in completed.stderr.decode()
    completed = _run(["generate"], input=b"sort \xfe1 =")
    assert completed.returncode == 2
    assert completed.stderr.decode().strip() == (
        "dyllm generate: error: standard input is not UTF-8 text (byte 0xfe at offset 5); "
        "convert it, e.g. with iconv -t UTF-8"
    )


def test_ctrl_c_while_torch_imports_ends_with_one_line_and_status_130() -> None:
    """The console command's entry module catches an interrupt before dyllm.cli is imported."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import dyllm_launcher; raise SystemExit(dyllm_launcher.main())"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.3)  # inside `import torch`
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.decode().strip().splitlines()[-1].endswith("interrupted")
    assert b"Traceback" not in err
