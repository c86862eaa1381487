"""`python -m cloud_runtime`: check the bundles, then serve them with gunicorn (gthread workers)
or, with `--engine ray`, on Ray Serve (`cloud_runtime.ray_engine`), with the same HTTP API.

The master process never imports TensorFlow: the app (and with it the backend) is created in
each worker after the fork. Workers share nothing, so the tier scales out behind any balancer.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cloud_runtime.config import (
    LOAD_MODES,
    TOKEN_ENV,
    ConfigError,
    ServerConfig,
    token_warning,
    workers_hint,
)
from cloud_runtime.connection import forget_request, remember_request
from cloud_runtime.ray_engine import HTTP_PROXIES, LAYOUTS, PROXY_LOCATIONS, RayOptions
from splitinfer.bundle.manifest import BundleError

PROG = "python -m cloud_runtime"
LOADER_GRACE_S = 2.0  # how long a stopping worker waits for the tail being loaded


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line + exit 2, like every other CLI error here
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = _OneLineParser(prog=PROG, description="Serve Keras tails of split-inference bundles over HTTP.")
    p.add_argument("--bundle", action="append", required=True, metavar="DIR",
                   help="bundle directory from python -m converter (repeat to serve several models)")
    p.add_argument("--engine", choices=("gunicorn", "ray"), default="gunicorn",
                   help="gunicorn (default): one machine; ray: Ray Serve replicas, on this machine "
                        "or a cluster (--ray-address)")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="worker processes; each loads every tail (one per GPU is a good start)")
    p.add_argument("--threads", type=int, default=None,
                   help="request threads per worker (default: max(8, 2 x max-batch))")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}; prefer the "
                        "environment, command lines are visible to other users)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="1 turns batching off")
    p.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms,
                   help="how long the first request of a batch may wait for others")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="waiting requests per (model, split) per worker before 503")
    p.add_argument("--no-early-dispatch", dest="early_dispatch", action="store_false",
                   help="always wait max-delay-ms for a batch to fill, even when no other "
                        "request is on its way (default: start as soon as none is)")
    p.add_argument("--load", choices=LOAD_MODES, default=d.load,
                   help="eager: load every tail at worker start (default); lazy: on first use")
    p.add_argument("--tail-backend", choices=("auto", "litert", "tf"), default=d.backend,
                   help="auto (default): LiteRT + XNNPACK on a CPU when every tail has a TFLite "
                        "file, TensorFlow on a GPU; litert; tf")
    p.add_argument("--tail-threads", type=int, default=None,
                   help="threads one tail call may use (default: every core; with --engine ray, "
                        "--cpus-per-replica)")
    p.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s)
    p.add_argument("--read-timeout-s", type=float, default=d.read_timeout_s,
                   help="longest silence allowed while a request body arrives (then 408)")
    p.add_argument("--body-deadline-s", type=float, default=d.body_deadline_s,
                   help="the whole request body must arrive within this, however slowly it "
                        "trickles (then 408 and the connection is closed)")
    p.add_argument("--certfile", help="serve https: the server's certificate chain (PEM)")
    p.add_argument("--keyfile", help="the private key of --certfile (PEM)")
    p.add_argument("--fault-injection", action="store_true",
                   help="testing only: enable POST /v1/_faults to make inference answer 5xx or "
                        "hang on purpose (see cloud_runtime/faults.py); never in production")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ray = p.add_argument_group("--engine ray", "with --workers as the number of HTTP ingress replicas")
    r = RayOptions()
    ray.add_argument("--replicas", type=int, default=r.replicas,
                     help="tail replicas (fixed; see --min/--max-replicas to autoscale)")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join a running cluster (ray start --head prints it; 'auto' finds a local "
                          "one); default: start a Ray instance here, stopped with the server")
    ray.add_argument("--min-replicas", type=int, default=None, help="autoscale from this many")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many")
    ray.add_argument("--target-ongoing-requests", type=float, default=r.target_ongoing_requests,
                     help="autoscaling aims at this many requests in flight per replica")
    ray.add_argument("--max-models-per-replica", type=int, default=r.max_models_per_replica,
                     help="tails one replica holds at once; Ray routes a tail to replicas holding it")
    ray.add_argument("--cpus-per-replica", type=float, default=r.cpus_per_replica,
                     help="CPUs Ray reserves per tail replica, also its tail threads")
    ray.add_argument("--layout", choices=LAYOUTS, default=r.layout,
                     help="split: HTTP ingress replicas feed tail replicas; fused: every replica "
                          "answers HTTP and runs its tails")
    ray.add_argument("--http-proxy", choices=HTTP_PROXIES, default=r.http_proxy,
                     help="haproxy: Ray's HAProxy, replicas answer HTTP themselves (fastest); ray: "
                          "Ray's Python proxy (TLS, clusters not started with HAProxy); auto "
                          "(default): haproxy when Ray starts here without TLS")
    ray.add_argument("--proxy-location", choices=tuple(PROXY_LOCATIONS), default=r.proxy_location,
                     help="HTTP proxies on every node (default) or on the head only")
    return p


def ray_options_from_args(args: argparse.Namespace) -> RayOptions:
    if args.workers != 1:
        raise ConfigError(f"--workers is gunicorn's; with --engine ray use --replicas. Received: "
                          f"--workers {args.workers}")
    options = RayOptions(
        replicas=args.replicas, address=args.ray_address, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing_requests,
        max_models_per_replica=args.max_models_per_replica, cpus_per_replica=args.cpus_per_replica,
        proxy_location=args.proxy_location, layout=args.layout, http_proxy=args.http_proxy)
    options.check()
    return options


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        bundles=tuple(args.bundle), host=args.host, port=args.port, workers=args.workers,
        threads=args.threads, token=args.token, max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms, max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue, early_dispatch=args.early_dispatch, load=args.load,
        backend=args.tail_backend, tail_threads=args.tail_threads,
        request_timeout_s=args.request_timeout_s, read_timeout_s=args.read_timeout_s,
        body_deadline_s=args.body_deadline_s,
        fault_injection=args.fault_injection, certfile=args.certfile, keyfile=args.keyfile,
    ).resolved()


def check_bundles(config: ServerConfig) -> None:
    """Fail in the master, once, before any worker starts (else workers crash-loop)."""
    from cloud_runtime.registry import ModelRegistry

    for b in config.bundles:
        if not Path(b).is_dir():
            raise BundleError(f"bundle directory {b} does not exist; build one with "
                              f"python -m converter SOURCE --out {b}")
    registry = ModelRegistry.from_bundles(config.bundles)
    from cloud_runtime.backend import choose_backend

    try:
        choose_backend(config.backend, registry.tails())
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _gunicorn_app(config: ServerConfig, log_level: str):
    from gunicorn.app.base import BaseApplication

    class SplitInferServer(BaseApplication):
        def load_config(self) -> None:
            settings: dict[str, Any] = {
                "bind": f"{config.host}:{config.port}",
                "workers": config.workers,
                "threads": config.threads,
                "worker_class": "gthread",
                "timeout": 120,  # tails load on a background thread, but TF import holds the GIL
                "graceful_timeout": 10,
                "keepalive": 5,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": log_level,
                "proc_name": "splitinfer-cloud",
                "control_socket_disable": True,  # one per user by default: servers would collide
                "worker_exit": _worker_exit,
                # the app marks a connection must-close when it answered without its body
                "pre_request": remember_request,
                "post_request": forget_request,
            }
            if config.tls:  # gunicorn's own TLS; the app sees the same WSGI requests
                settings.update(certfile=config.certfile, keyfile=config.keyfile)
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            from cloud_runtime.app import create_app

            return create_app(config)

    return SplitInferServer(prog=PROG)


def _worker_exit(server, worker) -> None:
    """Fail queued requests fast and release the backend when a worker stops.

    A worker stopped while its tails still load would abort in Python's shutdown (TensorFlow's
    native code on the loader thread); it waits a moment for the current tail, then leaves
    without that shutdown.
    """
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("splitinfer") if app is not None else None
    if service is None:
        return
    service.close()
    if service.busy(timeout_s=LOADER_GRACE_S):
        logging.getLogger("cloud_runtime").info(
            "worker %d stopped while loading tails; exiting without interpreter shutdown", os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        ray_options = ray_options_from_args(args) if args.engine == "ray" else None
        check_bundles(config)
    except (ConfigError, BundleError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    log = logging.getLogger("cloud_runtime")
    log.info("serving %d bundle(s) at %s%s", len(config.bundles), config.url,
             " (TLS)" if config.tls else "")
    warning = token_warning(config)
    if warning is not None:
        log.warning(warning)
    if ray_options is not None:
        from cloud_runtime.ray_engine import serve_forever

        return serve_forever(config, ray_options, args.log_level)
    from splitinfer.litert import default_num_threads

    hint = workers_hint(config.workers, default_num_threads())
    if hint is not None:
        log.info(hint)
    _gunicorn_app(config, args.log_level).run()
    return 0
