"""gunicorn settings for serving the app with gunicorn's own command instead of
`python -m cloud_runtime`:

    SPLITINFER_BUNDLES=DIR gunicorn -c python:cloud_runtime.gunicorn_conf 'cloud_runtime:create_app()'

The hooks are what lets an answer sent before the body was read close its connection at once,
and a worker stopped while its tails load exit cleanly; without them gunicorn keeps such
connections alive and drains them itself (see cloud_runtime/connection.py).
"""
from cloud_runtime.connection import forget_request, remember_request
from cloud_runtime.serve import _worker_exit

worker_class = "gthread"
threads = 16
keepalive = 5
pre_request = remember_request
post_request = forget_request
worker_exit = _worker_exit
