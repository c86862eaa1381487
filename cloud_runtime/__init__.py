"""Cloud side of split inference: an HTTP service that runs Keras tails, batched.

`create_app(config)` builds one worker's Flask app; `python -m cloud_runtime --bundle DIR` serves
it with gunicorn. Only `cloud_runtime.tf_backend` imports TensorFlow, inside the worker.
"""
from cloud_runtime.app import create_app
from cloud_runtime.config import ServerConfig

__all__ = ["create_app", "ServerConfig"]
