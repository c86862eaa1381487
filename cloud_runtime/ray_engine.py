"""The cloud tier on Ray Serve: the same HTTP API as gunicorn, on one machine or a cluster.

Two layouts. `fused` (the default): each `Replica` runs the Flask app of a gunicorn worker
(auth, limits, decoding, our batcher, in-process tails) behind Ray's HTTP front through
`cloud_runtime.asgi`: one hop per request. `split`: `Ingress` replicas run the app with a
backend that sends each decoded input to `TailReplicas`, which batch across every ingress with
`@serve.batch`, pad to the bucket sizes, and hold a bounded number of tails each with
`@serve.multiplexed`, so Ray routes a tail's requests to the replicas holding it. Either way
tails are loaded inside each replica from the bundle's files (Keras models do not pickle
reliably), so a node needs the bundles at the same path, and any replica answers any request.

Only the serving process and the replicas import Ray; the edge never does.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from cloud_runtime.backend import LoadTiming, RemoteRun, TailBackend, TailSpec
from cloud_runtime.config import ConfigError, ServerConfig

log = logging.getLogger("cloud_runtime")
APP_NAME = "splitinfer"
PROXY_LOCATIONS = {"head": "HeadOnly", "every-node": "EveryNode"}
LAYOUTS = ("fused", "split")
HTTP_PROXIES = ("auto", "haproxy", "ray")
DESCRIBE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RayOptions:
    """How the tier is laid out on Ray; the per-request settings stay in ServerConfig.

    `min_replicas`/`max_replicas` turn on autoscaling between them, aiming at
    `target_ongoing_requests` per replica; otherwise `replicas` is fixed.
    """

    replicas: int = 1
    address: str | None = None  # join this cluster; None starts a local Ray instance
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_models_per_replica: int = 64
    cpus_per_replica: float = 1.0  # also the replica's tail threads (at least one)
    proxy_location: str = "every-node"
    layout: str = "fused"  # fused: each replica answers HTTP and runs tails; split: ingress + tails
    http_proxy: str = "auto"  # haproxy, ray (its Python proxy), auto: haproxy where it can run

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def check(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1. Received: {self.replicas}")
        if self.autoscaling:
            low, high = self.min_replicas or 0, self.max_replicas
            if high is None or high < max(low, 1):
                raise ConfigError("autoscaling needs --max-replicas >= max(1, --min-replicas). "
                                  f"Received: min={self.min_replicas}, max={self.max_replicas}")
            if not self.target_ongoing_requests > 0:
                raise ConfigError("--target-ongoing-requests must be > 0. Received: "
                                  f"{self.target_ongoing_requests}")
        if self.max_models_per_replica < 1:
            raise ConfigError(f"--max-models-per-replica must be >= 1. Received: {self.max_models_per_replica}")
        if not self.cpus_per_replica > 0:
            raise ConfigError(f"--cpus-per-replica must be > 0. Received: {self.cpus_per_replica}")
        if self.http_proxy not in HTTP_PROXIES:
            raise ConfigError(f"--http-proxy must be one of {HTTP_PROXIES}. Received: {self.http_proxy!r}")
        if self.http_proxy == "haproxy" and self.address is not None:
            raise ConfigError("--http-proxy haproxy needs a Ray instance started here; on a cluster, "
                              "start it with RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=1 "
                              "in the environment of `ray start` (see cloud_runtime/README.md)")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout must be one of {LAYOUTS}. Received: {self.layout!r}")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise ConfigError(f"--proxy-location must be one of {tuple(PROXY_LOCATIONS)}. "
                              f"Received: {self.proxy_location!r}")

    def proxy_for(self, tls: bool) -> str:
        """The HTTP proxy this server runs: HAProxy where this process starts Ray and serves
        plain HTTP (Ray terminates TLS in its Python proxy), else Ray's Python proxy."""
        if self.http_proxy == "haproxy" and tls:
            raise ConfigError("--http-proxy haproxy does not serve TLS here; use --http-proxy ray "
                              "with --certfile/--keyfile, or terminate TLS in front of HAProxy")
        if self.http_proxy != "auto":
            return self.http_proxy
        return "haproxy" if self.address is None and not tls else "ray"

    def scaling(self) -> dict:
        """The tail deployment's replica settings, as Ray Serve takes them."""
        if not self.autoscaling:
            return {"num_replicas": self.replicas}
        return {"autoscaling_config": {
            "min_replicas": self.min_replicas or 0, "max_replicas": self.max_replicas,
            "initial_replicas": max(self.min_replicas or 0, 1),
            "target_ongoing_requests": self.target_ongoing_requests}}


# ---- the ingress's view of the replicas -----------------------------------------------------


class RayTailBackend(TailBackend):
    """Sends single inputs to the tail replicas; they batch (`batches_itself`)."""

    engine = "ray"
    batches_itself = True

    def __init__(self, handle) -> None:
        self._handle = handle
        self._facts: dict | None = None

    def start(self) -> None:
        facts = self._handle.describe.remote().result(timeout_s=DESCRIBE_TIMEOUT_S)
        self.name = facts["backend"]
        self.chosen_because = facts["chosen_because"]
        self._facts = facts

    @property
    def device(self) -> str | None:
        return None if self._facts is None else self._facts["device"]

    def device_info(self) -> dict:
        return {} if self._facts is None else {**self._facts["device_info"], "engine": "ray"}

    def load(self, tail: TailSpec) -> LoadTiming:
        """Replicas load their own tails; this is what loading it cost the first replica."""
        load_s, warmup_s = (self._facts or {}).get("loads", {}).get(tail.key, (0.0, 0.0))
        return LoadTiming(load_s, warmup_s)

    def is_loaded(self, tail: TailSpec) -> bool:
        return True  # a replica loads a tail it does not hold on its first request

    def run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the Ray tail replicas batch themselves: call run_one()")

    def run_one(self, tail: TailSpec, x: np.ndarray, timeout_s: float) -> RemoteRun:
        from ray.exceptions import GetTimeoutError

        response = self._handle.options(multiplexed_model_id=tail.key).infer.remote(tail.key, x)
        try:
            return response.result(timeout_s=timeout_s)
        except GetTimeoutError:
            response.cancel()
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None


# ---- the replicas -----------------------------------------------------------------------------


class _Held:
    """A tail a replica holds; Ray's multiplexing calls `__del__` when it evicts it."""

    def __init__(self, backend: TailBackend, tail: TailSpec):
        self.backend, self.tail = backend, tail

    def __del__(self) -> None:
        self.backend.unload(self.tail)


def _log_like_the_server(level: str) -> None:
    """Replica processes log to stderr as a gunicorn worker would; Ray forwards it to the
    server's output (Serve's own handlers write to files under the session's log folder)."""
    import sys

    logger = logging.getLogger("cloud_runtime")
    if not any(getattr(h, "splitinfer", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
        handler.splitinfer = True
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _asgi_app(config: ServerConfig, backend: TailBackend | None = None):
    """The Flask app behind the ASGI bridge, under the config's body limits."""
    from cloud_runtime.app import create_app
    from cloud_runtime.asgi import BodyLimits, WSGIOnASGI

    limits = BodyLimits(config.max_body_bytes, config.read_timeout_s, config.body_deadline_s)
    return WSGIOnASGI(create_app(config, backend=backend), limits, threads=config.threads)


def _deployments(config: ServerConfig, options: RayOptions, log_level: str = "info"):
    """The two deployment classes, with this configuration's batching and multiplexing."""
    from ray import serve

    threads = max(1, int(options.cpus_per_replica))
    config = dataclasses.replace(config, tail_threads=threads)

    quiet = {"log_level": "WARNING", "enable_access_log": False}  # our own lines: see above

    @serve.deployment(ray_actor_options={"num_cpus": options.cpus_per_replica},
                      max_ongoing_requests=max(2 * config.max_batch, 16), logging_config=quiet,
                      **options.scaling())
    class TailReplicas:
        async def __init__(self) -> None:
            _log_like_the_server(log_level)
            from cloud_runtime.backend import make_backend
            from cloud_runtime.buckets import bucket_sizes
            from cloud_runtime.load import LoadMeter
            from cloud_runtime.registry import ModelRegistry

            tails = ModelRegistry.from_bundles(config.bundles).tails()
            self._tails = {t.key: t for t in tails}
            self._backend = make_backend(config.backend, tails, num_threads=config.tail_threads)
            self._backend.start()
            self._buckets = bucket_sizes(config.max_batch)
            self._meter = LoadMeter(config.max_batch)
            self._batch_ids = itertools.count()
            import ray

            self._replica = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
            self._loads: dict[str, tuple[float, float]] = {}
            self.infer_batch.set_max_batch_size(config.max_batch)
            self.infer_batch.set_batch_wait_timeout_s(config.max_delay_s)
            if config.load == "eager":  # as many as a replica may hold; the rest on first use
                for tail in tails[:options.max_models_per_replica]:
                    # through the multiplexer, so that Ray routes the tail to every replica
                    # holding it, not only to the first one a request for it reached
                    await self.hold(tail.key)

        def _load(self, tail: TailSpec) -> None:
            timing = self._backend.load(tail)
            if timing.load_s or timing.warmup_s:
                self._loads[tail.key] = (timing.load_s, timing.warmup_s)

        def describe(self) -> dict:
            return {"backend": self._backend.name, "chosen_because": self._backend.chosen_because,
                    "device": self._backend.device, "device_info": self._backend.device_info(),
                    "threads": threads, "replica": self._replica, "loads": dict(self._loads)}

        @serve.multiplexed(max_num_models_per_replica=options.max_models_per_replica)
        async def hold(self, key: str) -> _Held:
            tail = self._tails[key]
            if not self._backend.is_loaded(tail):
                await asyncio.to_thread(self._load, tail)
            return _Held(self._backend, tail)

        async def infer(self, key: str, x: np.ndarray) -> RemoteRun:
            arrived = time.perf_counter()
            if key not in self._tails:
                raise KeyError(f"no tail {key} in this replica's bundles")
            self._meter.admitted()
            try:
                await self.hold(key)
                return await self.infer_batch(key, x, arrived)
            finally:
                self._meter.answered()

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def infer_batch(self, keys: list[str], xs: list[np.ndarray],
                              arrivals: list[float]) -> list[RemoteRun]:
            from cloud_runtime.buckets import assemble, bucket_for, unpad

            start = time.perf_counter()
            outputs: list[np.ndarray | None] = [None] * len(xs)
            for key in dict.fromkeys(keys):  # one tail per batch when multiplexed; group anyway
                rows = [i for i, k in enumerate(keys) if k == key]
                tail = self._tails[key]
                if not self._backend.is_loaded(tail):  # evicted while this batch waited
                    await asyncio.to_thread(self._load, tail)
                bucket = bucket_for(len(rows), self._buckets)
                batch = assemble([xs[i] for i in rows], bucket)
                out = await asyncio.to_thread(self._backend.run, tail, batch)
                for i, y in zip(rows, unpad(out, bucket, len(rows))):
                    outputs[i] = np.asarray(y)
            run_s = time.perf_counter() - start
            self._meter.batch(len(xs), run_s)
            for t in arrivals:
                self._meter.waited(start - t)
            batch_id = f"{os.getpid()}:{next(self._batch_ids)}"
            report = self._meter.report()
            return [RemoteRun(y, start - t, run_s, len(xs), batch_id, self._replica, report)
                    for y, t in zip(outputs, arrivals)]

    @serve.deployment(ray_actor_options={"num_cpus": 0}, **options.scaling(),
                      max_ongoing_requests=max(config.threads, 8), logging_config=quiet)
    @serve.ingress()
    class Ingress:
        def __init__(self, tails) -> None:
            _log_like_the_server(log_level)
            self._tails = tails

        def __serve_build_asgi_app__(self):
            return _asgi_app(config, RayTailBackend(self._tails))

    @serve.deployment(ray_actor_options={"num_cpus": options.cpus_per_replica}, **options.scaling(),
                      max_ongoing_requests=max(config.threads, 8), logging_config=quiet)
    @serve.ingress()
    class Replica:
        """The fused layout: a gunicorn worker's app in each replica, tails in process."""

        def __init__(self) -> None:
            _log_like_the_server(log_level)

        def __serve_build_asgi_app__(self):
            return _asgi_app(config)  # the configured backend, on config.tail_threads

    return Ingress, TailReplicas, Replica


def build_application(config: ServerConfig, options: RayOptions, log_level: str = "info"):
    """The bound Serve application: `serve.run(build_application(...))`."""
    ingress, tails, replica = _deployments(config, options, log_level)
    if options.layout == "fused":
        return replica.bind()
    return ingress.bind(tails.bind())


# ---- the command -----------------------------------------------------------------------------


def _take_down(started_here: bool) -> bool:
    """Delete the application from a cluster, or stop the Ray instance started here, bounded in time: Ray's
    own processes may have received the same signal and be gone, and Serve would then wait for
    its controller for ever. Whether it finished."""
    import ray
    from ray import serve

    def take_down() -> None:
        try:
            if not started_here:  # a shared cluster: take our application off it, only that
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()  # started here: this stops every actor, replicas included

    down = threading.Thread(target=take_down, name="ray-shutdown", daemon=True)
    down.start()
    down.join(STOP_TIMEOUT_S)
    return not down.is_alive()


def serve_forever(config: ServerConfig, options: RayOptions, log_level: str = "info") -> int:
    """Start (or join) Ray, deploy, wait for SIGTERM/SIGINT, then take the application down."""
    options.check()
    quiet_ray = logging.WARNING if log_level in ("info", "warning") else log_level.upper()
    import ray
    from ray import serve

    started_here = options.address is None
    proxy = options.proxy_for(config.tls)
    haproxy_dir = None
    if proxy == "haproxy":  # read by the Ray processes this init starts
        from cloud_runtime.ray_proxy import haproxy_environment

        env, haproxy_dir = haproxy_environment()
        os.environ.update(env)
    ray.init(address=options.address, include_dashboard=False if started_here else None,
             logging_level=quiet_ray, log_to_driver=True, configure_logging=False,
             namespace="splitinfer")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        http = {"host": config.host, "port": config.port}
        if config.tls:
            http.update(ssl_certfile=config.certfile, ssl_keyfile=config.keyfile)
        serve.start(proxy_location=PROXY_LOCATIONS[options.proxy_location], http_options=http,
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        t0 = time.monotonic()
        serve.run(build_application(config, options, log_level), name=APP_NAME, route_prefix="/")
        replicas = (f"{options.min_replicas or 0}..{options.max_replicas} autoscaled"
                    if options.autoscaling else str(options.replicas))
        log.info("ray engine ready in %.1f s at %s%s: %s layout, %s replica(s) of %g CPU, %s proxy; "
                 "cluster %s", time.monotonic() - t0, config.url, " (TLS)" if config.tls else "",
                 options.layout, replicas, options.cpus_per_replica, proxy,
                 options.address or "started here")
        stop.wait()
        log.info("stopping: %s", "stopping Ray" if started_here else "deleting the application")
    finally:
        clean = _take_down(started_here)
        if haproxy_dir is not None:  # Ray leaves its HAProxy running (see ray_proxy)
            from cloud_runtime.ray_proxy import stop_haproxy

            stop_haproxy(haproxy_dir)
            shutil.rmtree(haproxy_dir, ignore_errors=True)
    if not clean:
        log.warning("Ray did not stop within %g s (a signal to the whole process group, such as "
                    "Ctrl-C, stops Ray's own processes first); exiting without waiting", STOP_TIMEOUT_S)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        os._exit(0)
    return 0
