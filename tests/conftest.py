"""Test set-up (must precede the first jax import): 8 fake CPU devices for sharding tests,
and one persistent compilation cache for the checkout, so that the many runs of the same
smoke models (the command-line subprocesses, resumes, the rules' loops) compile each
program once (a fresh clone starts it empty; `rm -rf .cache/jax` clears it)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"))
# Every program, not only those over JAX's default 1 s: a ResNet's initializers compile in
# 0.2-1 s a shape, and each test and subprocess would compile them again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
