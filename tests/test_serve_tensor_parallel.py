"""`torchrun --nproc-per-node 2 -m dyllm serve --tensor-parallel 2` on the CPU (gloo, loopback).

One server split over two processes answers the official OpenAI client with exactly the text
`dyllm.generate` gives on one process (greedy, the built-in llada-ref), batches concurrent
requests (both answers checked), survives a policy that refuses its parameters on every process
(a 400), stops a batch whose client left on both processes, and on SIGTERM to torchrun ends both
processes: the first after its graceful shutdown, the second through the first's sentinel (its
log line says so).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import dyllm  # noqa: E402
from dyllm.reference.registry import builtin_model_path  # noqa: E402
from dyllm.reference.tasks import heldout_problems  # noqa: E402
from dyllm.serve.app import BATCH_HEADER  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux's /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited, not yet reaped


@dataclass
class SplitServer:
    """`dyllm serve` under torchrun on two processes, up and answering on `url`."""

    process: subprocess.Popen
    url: str
    workers: list[int]

    def stop(self) -> str:
        """SIGTERM to torchrun; wait until it and both servers are gone; torchrun's output."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        limit = time.monotonic() + 30
        while not all(_gone(pid) for pid in self.workers):
            assert time.monotonic() < limit, "a server process outlived torchrun"
            time.sleep(0.1)
        return self.process.stdout.read()  # type: ignore[union-attr]


@contextmanager
def split_server(serve_arguments: list[str]) -> Iterator[SplitServer]:
    """Start `torchrun --nproc-per-node 2 -m dyllm serve ARGS --tensor-parallel 2` on a free
    loopback port, wait for /health, and kill whatever is left at the end."""
    port = _free_port()
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc-per-node", "2", "-m", "dyllm", "serve", "--port", str(port)]
    command += [*serve_arguments, "--tensor-parallel", "2"]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = SplitServer(process, f"http://127.0.0.1:{port}", [])
    try:
        limit = time.monotonic() + STARTUP_S
        while True:
            try:
                if httpx.get(server.url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < limit, f"the server did not come up in {STARTUP_S} s"
            time.sleep(0.1)
        server.workers = _children(process.pid)
        assert len(server.workers) == 2, server.workers
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in server.workers:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_split_over_two_processes_answers_as_one_and_stops_on_sigterm() -> None:
    with split_server(["--model", "llada-ref", "--batch-window-ms", "300"]) as server:
        url = server.url
        model = dyllm.load(builtin_model_path("llada-ref"))
        prompts = [heldout_problems("sort")[0].prompt, heldout_problems("mul3")[1].prompt]
        expected = [
            dyllm.generate(model, [prompt], stop_at_eos=True, gen_length=24).texts[0]
            for prompt in prompts
        ]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answer = client.completions.create(model="llada-ref", prompt=prompts[0], max_tokens=24)
        assert answer.choices[0].text == expected[0]
        # a policy refusing its parameters when built: a 400, and every process goes on
        with pytest.raises(openai.BadRequestError, match="tau"):
            extra = {"policy": "dyllm", "policy_args": {"tau": 2}}
            client.completions.create(model="llada-ref", prompt=prompts[0], extra_body=extra)

        async def concurrently() -> list:
            async with openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0
            ) as async_client:
                calls = [
                    async_client.completions.with_raw_response.create(
                        model="llada-ref", prompt=prompt, max_tokens=24
                    )
                    for prompt in prompts
                ]
                return list(await asyncio.gather(*calls))

        raw = asyncio.run(concurrently())
        assert [response.headers[BATCH_HEADER] for response in raw] == ["2", "2"]
        assert [response.parse().choices[0].text for response in raw] == expected

        # a client that leaves: its batch stops on both processes at the same step
        long = {"steps": 200, "block_length": 200}
        with pytest.raises(openai.APITimeoutError):
            client.with_options(timeout=0.5).completions.create(
                model="llada-ref", prompt=prompts[1], max_tokens=200, extra_body=long
            )
        limit = time.monotonic() + 30
        while "dyllm_aborted_batches_total 1.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < limit, "the abandoned batch did not stop"
            time.sleep(0.1)
        answer = client.completions.create(model="llada-ref", prompt=prompts[1], max_tokens=24)
        assert answer.choices[0].text == expected[1]

        output = server.stop()
        assert "process 1 of 2: process 0 stopped serving; leaving" in output, output[-3000:]
