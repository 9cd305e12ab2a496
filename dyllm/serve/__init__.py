"""`dyllm serve`: an OpenAI-compatible HTTP server that batches requests and streams denoising.

Needs the `serve` extra (FastAPI, uvicorn, prometheus_client): `pip install 'dyllm[serve]'`.
The command line imports this package only for `dyllm serve`, so the core install stays light.

| module | what |
|---|---|
| `protocol.py` | request models (OpenAI fields + dyllm's), response and chunk shapes |
| `errors.py` | OpenAI-style error JSON, one handler for every failure |
| `policy_spec.py` | the policy a request names, checked through the registry |
| `preparation.py` | a request checked and turned into a `Job`; its batch key |
| `jobs.py` | the job and the events the worker sends the handler |
| `scheduler.py` | the bounded queue and the gathering of compatible jobs into batches |
| `worker.py` | the model's one thread: a generate call per batch, streaming from `on_step` |
| `streaming.py` | finished blocks to text, stop strings, canvas rendering, SSE bytes |
| `metrics.py` | Prometheus metrics and the middleware that counts responses |
| `security.py` | the API key check (Bearer, constant-time), the body limit, the closed defaults |
| `settings.py` | the server's settings and the loaded model |
| `app.py` | the FastAPI app: routes, waiting, streaming, shutdown |
| `server.py` | uvicorn in the foreground (`dyllm serve`) or on a background thread |
"""

from dyllm.serve.app import create_app
from dyllm.serve.server import BackgroundServer, serve
from dyllm.serve.settings import ServedModel, ServeSettings, load_served_model

__all__ = [
    "BackgroundServer",
    "ServeSettings",
    "ServedModel",
    "create_app",
    "load_served_model",
    "serve",
]
