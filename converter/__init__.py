"""Build-time side: cut a Keras model into verified TFLite heads and Keras tails, and profile
every config. Needs TensorFlow; nothing at run time imports it."""
import os

# The converter always runs TensorFlow: keep its native logs quiet unless the user asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
