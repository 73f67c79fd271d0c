"""Starting a prompt server: load the frozen model and the prompts, serve over HTTP, compile.

`build_service` loads the frozen model through the library's inference loading
(`inference.load_params`: INITIAL_CHECKPOINT_PATH, or the RANDOM_SEED initialisation of a model
without checkpoint), reads PROMPT_DIR and plans the warm-up programs. `serve` (configured by
`gin_configs/runs/serve.gin`, run by `python -m prompt_tuning.serve` / `pt-serve`) then runs the
FastAPI app on uvicorn: the listener comes up (GET /healthz: live) while the programs compile in
the background, smallest buckets first (GET /readyz: 503 with the progress, 200 once all are
compiled). On SIGINT/SIGTERM uvicorn stops accepting connections, in-flight requests finish (the
queue drains) and the process exits.

JAX's persistent compilation cache is on by default (`enable_compilation_cache`): a restart loads
the compiled programs from `default_cache_dir()` (or COMPILATION_CACHE_DIR) instead of compiling
them again.

The programs are compiled against the shardings the parameters carry, so a frozen model that
`load_params` places over a ("data", "model") mesh is served sharded with the batch split over
"data". One process serves (a server spanning several hosts would need every process to run
each batch; not built).
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import uvicorn

from prompt_tuning.predict import inference
from prompt_tuning.serve import engine as engine_lib
from prompt_tuning.serve import loading
from prompt_tuning.serve.app import create_app
from prompt_tuning.serve.service import Limits, Service, ServiceConfig
from prompt_tuning.train import data


def default_cache_dir() -> pathlib.Path:
    """The persistent compilation cache's default folder: `$XDG_CACHE_HOME/prompt_tuning/jax`,
    else `~/.cache/prompt_tuning/jax`."""
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "prompt_tuning" / "jax"


def enable_compilation_cache(folder: str | os.PathLike | None = None) -> pathlib.Path:
    """Turns on JAX's persistent compilation cache in `folder` (None: `default_cache_dir()`).

    Every program is cached, however small or fast to compile (the serving programs of a small
    model take a second or two each, below JAX's default thresholds). Call it before the first
    compilation of the process. Entries are keyed by the program, the compiler options, the JAX
    version and the devices, so a changed model or JAX compiles afresh.

    Returns:
      The folder (created).

    Raises:
      OSError: the folder cannot be created (the message names it).
    """
    path = pathlib.Path(folder) if folder else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"Cannot create the compilation cache folder {path} ({error.strerror}); set "
            "COMPILATION_CACHE_DIR to a writable folder or COMPILATION_CACHE = False."
        ) from error
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def build_service(
    model: Any,
    vocabulary: Any,
    config: ServiceConfig,
    initial_checkpoint_path: str | None = None,
    prompt_dir: str | None = None,
    random_seed: int = 0,
    frozen_dtype: str | None = None,
    label_lookup: Callable[[str], Sequence[str] | None] | None = None,
    start_warm_up: bool = True,
) -> Service:
    """Loads the frozen model and the prompts and starts compiling the programs (background).

    Args:
      model: MODEL, the frozen `EncoderDecoder` (serve.gin sets PROMPT = None).
      vocabulary: VOCABULARY.
      config: batching, buckets, bank size.
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (None: RANDOM_SEED initialisation).
      prompt_dir: PROMPT_DIR, a folder of `<task>.npy` prompts and/or runs (None: start empty).
      random_seed: RANDOM_SEED.
      frozen_dtype: FROZEN_DTYPE.
      label_lookup: a task name -> its label strings (classify's default labels).
      start_warm_up: start compiling now (False: at `Service.start_warm_up`, which the app calls
        when its listener comes up).

    Returns:
      The running `Service` (`Service.wait_ready` waits for its programs).

    Raises:
      ValueError, FileNotFoundError: a bad checkpoint or PROMPT_DIR (the message names it).
    """
    if jax.process_count() > 1:
        raise ValueError(
            "pt-serve runs in one process; start it without jax.distributed (one host's devices "
            "form the mesh)."
        )
    module = model.module if hasattr(model, "module") else model
    if getattr(module, "prompt", None) is not None:
        logging.info("MODEL has a prompt module; the server replaces it with its prompt bank.")
        module = module.clone(prompt=None)
    found = loading.scan_prompt_dir(prompt_dir) if prompt_dir else []  # a bad folder fails fast
    buckets = config.buckets
    lengths = {"inputs": buckets.input_length[0], "targets": buckets.decode_length[0]}
    params, _ = inference.load_params(
        inference.as_prompt_model(module),
        lengths,
        initial_checkpoint_path=initial_checkpoint_path,
        random_seed=random_seed,
        frozen_dtype=frozen_dtype,
    )
    return Service(module, params, vocabulary, config, found, label_lookup, start_warm_up)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server that, on SIGINT/SIGTERM, also starts draining the service at once: queued
    requests run without waiting for company (BATCH_WAIT_MS), new ones are refused (503), and
    /readyz answers 503."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Off the signal handler: draining takes the batcher's lock, which this thread may hold.
        threading.Thread(target=self._service.begin_drain, daemon=True).start()
        super().handle_exit(sig, frame)


def make_server(
    service: Service,
    drain_timeout: float = 30.0,
    log_level: str = "warning",
    access_log: bool = False,
):
    """A uvicorn server for the service's app (graceful shutdown waits `drain_timeout` s)."""
    config = uvicorn.Config(
        create_app(service, drain_timeout),
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=drain_timeout,
        lifespan="on",
    )
    return _Server(config, service)


class BackgroundServer:
    """Serves a `Service` on a thread of this process (tests, notebooks); `stop()` drains it.

    Attributes:
      url: `http://host:port`.
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, **kwargs):
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = make_server(service, **kwargs)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)

    def stop(self, timeout: float = 60.0) -> None:
        """Stops accepting connections, lets in-flight requests finish, and joins."""
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(
    model: Any,
    vocabulary: Any,
    initial_checkpoint_path: str | None = None,
    prompt_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_buckets: Sequence[int] = (1, 32),
    input_length_buckets: Sequence[int] = (64, 256),
    decode_length_buckets: Sequence[int] = (64,),
    label_length_buckets: Sequence[int] = (8,),
    label_count_buckets: Sequence[int] = (4,),
    beam_sizes: Sequence[int] = (4,),
    warmup: Sequence[str] = ("greedy", "score"),
    batching: str = "mixed",
    batch_wait_ms: float = 2.0,
    max_queue_rows: int = 1024,
    bank_capacity: int = 64,
    bank_prompt_length: int | None = None,
    bank_max_capacity: int = 4096,
    max_prompt_length: int = 1024,
    limits: Mapping[str, int] | None = None,
    drain_timeout: float = 30.0,
    random_seed: int = 0,
    frozen_dtype: str | None = None,
    label_lookup: Callable[[str], Sequence[str] | None] | None = None,
    mixture_or_task_module: str | None = "tasks",
    compilation_cache: bool = True,
    compilation_cache_dir: str | None = None,
    access_log: bool = False,
) -> None:
    """Serves prompts over HTTP until interrupted: `python -m prompt_tuning.serve` (serve.gin).

    Args are the serve.gin macros: MODEL, VOCABULARY, INITIAL_CHECKPOINT_PATH, PROMPT_DIR, HOST,
    PORT, BATCH_BUCKETS, INPUT_LENGTH_BUCKETS, DECODE_LENGTH_BUCKETS, LABEL_LENGTH_BUCKETS,
    LABEL_COUNT_BUCKETS (labels per input of a score program; see `engine.Buckets`),
    BEAM_SIZES, WARMUP, BATCHING ("mixed" or "per_prompt"), BATCH_WAIT_MS, MAX_QUEUE_ROWS,
    BANK_CAPACITY, BANK_PROMPT_LENGTH, BANK_MAX_CAPACITY, MAX_PROMPT_LENGTH, LIMITS (fields of
    `service.Limits`), DRAIN_TIMEOUT, RANDOM_SEED, FROZEN_DTYPE, the label lookup and
    MIXTURE_OR_TASK_MODULE (imported so that task label strings are known),
    COMPILATION_CACHE (JAX's persistent compilation cache, on by default: a restart loads the
    programs instead of compiling them) in COMPILATION_CACHE_DIR (None: `default_cache_dir()`)
    and ACCESS_LOG (log every request; the counts are in /metrics either way).

    The listener comes up before the programs compile: GET /healthz answers at once, GET /readyz
    says 200 once every WARMUP program is compiled (smallest buckets first; requests are served
    meanwhile).
    """
    if compilation_cache:
        cache = enable_compilation_cache(compilation_cache_dir)
        logging.info("Persistent compilation cache: %s", cache)
    data.import_task_modules(mixture_or_task_module)
    config = ServiceConfig(
        buckets=engine_lib.Buckets(
            tuple(batch_buckets),
            tuple(input_length_buckets),
            tuple(decode_length_buckets),
            tuple(label_length_buckets),
            tuple(label_count_buckets),
        ),
        bank_capacity=bank_capacity,
        bank_prompt_length=bank_prompt_length,
        max_prompt_length=max_prompt_length,
        max_capacity=bank_max_capacity,
        policy=batching,
        max_wait_s=batch_wait_ms / 1e3,
        max_queue_rows=max_queue_rows,
        beam_sizes=tuple(beam_sizes),
        warmup=tuple(warmup),
        limits=Limits(**dict(limits or {})),
    )
    sock = bind(host, port)  # before compiling: a taken port fails fast
    service = build_service(
        model,
        vocabulary,
        config,
        initial_checkpoint_path,
        prompt_dir,
        random_seed,
        frozen_dtype,
        label_lookup,
        start_warm_up=False,  # the app starts it with the listener
    )
    bound_port = sock.getsockname()[1]
    print(
        f"Serving {len(service.registry.names())} prompts on http://{host}:{bound_port} "
        f"(live: /healthz; ready once {len(service.warmup.keys)} programs are compiled, "
        "smallest first: /readyz; API docs: /docs)",
        flush=True,
    )
    make_server(service, drain_timeout, "info", access_log).run(sockets=[sock])
    print("Server stopped.", flush=True)
