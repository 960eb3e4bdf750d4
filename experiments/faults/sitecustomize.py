"""Fault injection for experiments.bad_inputs, loaded only when that tool puts this folder
on PYTHONPATH and sets REC_LRA_FAULT (Python imports `sitecustomize` at start-up):

  unwritable:DIR   creating or writing anything under DIR fails with EACCES
  readonly:DIR     the same with EROFS (a read-only file system)
  enospc:STEP      saving the checkpoint of STEP fails with ENOSPC (a full disk)

They stand in for what a root user on a shared CI machine cannot set up for real (root
ignores permission bits; mounting a small or read-only file system needs privileges).
"""

import builtins
import errno
import os

_FAULT = os.environ.get("REC_LRA_FAULT", "")


def _install(kind: str, arg: str) -> None:
    if kind in ("unwritable", "readonly"):
        code = errno.EACCES if kind == "unwritable" else errno.EROFS
        root = os.path.abspath(arg)

        def blocked(path) -> bool:
            try:
                path = os.path.abspath(os.fsdecode(path))
            except TypeError:  # a file descriptor
                return False
            return path == root or path.startswith(root + os.sep)

        def fail(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))

        real_open, real_mkdir = builtins.open, os.mkdir

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and blocked(file):
                fail(file)
            return real_open(file, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if blocked(path):
                fail(path)
            return real_mkdir(path, *args, **kwargs)

        builtins.open, os.mkdir = open_, mkdir  # os.makedirs calls os.mkdir
    elif kind == "enospc":
        import orbax.checkpoint as ocp  # noqa: PLC0415

        real_save, step = ocp.CheckpointManager.save, int(arg)

        def save(self, at, *args, **kwargs):
            if at == step:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(self, at, *args, **kwargs)

        ocp.CheckpointManager.save = save
    else:
        raise ValueError(f"REC_LRA_FAULT={_FAULT!r}: unknown fault {kind!r}")


if _FAULT:
    _install(*_FAULT.partition(":")[::2])
