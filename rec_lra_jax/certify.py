"""Weight-transport certificate: inspects a traced train step (docs/algorithm.md, check 3).

A rule is certified when, in the jaxpr of one train step,
  (a) no forward weight of one layer enters another layer's target, error or update: every
      operation that combines a kernel W_l (or anything computed from W_l alone, such as
      W_l^T, rev(W_l) or sign(W_l)) with other data, and whose result reaches the new
      parameters, synapses or optimizer state of another layer, must be one of the forward
      pass's own uses of W_l (counted by tracing the model's forward alone). Backprop fails
      this (its input cotangents use W_l^T), so does a planted W^T feedback and sign
      symmetry; the optimizer's own uses of W_l (weight decay, the update) only reach
      layer l and are allowed.
  (b) no differentiation through the network: while the step is traced, every call of
      jax.grad / value_and_grad / vjp / jvp / linearize / jacrev / jacfwd / hessian is
      checked, and one whose function feeds a kernel (argument or closure) into an op that
      autodiff would differentiate fails. Kernels that enter only custom_vjp layers (a
      declared backward, as in feedback alignment's B) or stop_gradient pass, and so do
      parameter-free local adjoints (a max-pool's transpose, phi' of an activation,
      `jax.linear_transpose` of one layer's linear map).

"Forward weights" are the kernel leaves (conv and dense) of the params tree. Biases and
BatchNorm scales act on a layer's own units (like phi'), so a layer may use them in its own
error. Calls inside scan, while and cond bodies are treated conservatively as one operation.
What runs once before training is not traced: the synapses' init, including the weight
mirror (`lra.weight_mirror`), which reads a kernel only through its layer's forward map
applied to noise. Limits: (b) recognises kernels by identity, so code that copies them
before differentiating is caught by (a) only; (a) catches any reuse of a kernel outside its
forward, whatever produced it.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.tree_util import DictKey, GetAttrKey, keystr

# Call-like primitives whose body is inlined; any other primitive holding a jaxpr (scan,
# while, cond) is one opaque operation from all its inputs to all its outputs.
_INLINE = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "remat", "checkpoint", "remat2"}
_AUTODIFF = ("grad", "value_and_grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian")


@dataclasses.dataclass
class Certificate:
    """The verdict: `certified`, the `reasons` it holds and the `violations` if it does not."""

    certified: bool
    reasons: list[str]
    violations: list[str]

    def __str__(self) -> str:
        head = "CERTIFIED: no weight transport" if self.certified else "NOT CERTIFIED"
        lines = [head] + [f"  - {r}" for r in (self.reasons if self.certified else
                                               self.violations)]
        return "\n".join(lines)


@dataclasses.dataclass
class _Flat:
    """A jaxpr inlined into flat equations over integer variable ids."""

    num_inputs: int
    eqns: list  # (primitive name, input ids (None: literal/constant), output ids)
    outputs: list  # ids of the top-level outputs (None: literal)


def _flatten(closed: jax.extend.core.ClosedJaxpr) -> _Flat:
    counter = iter(range(1 << 62))
    eqns: list = []

    def run(jaxpr, in_ids):
        env = dict(zip(jaxpr.invars, in_ids, strict=True))
        for v in jaxpr.constvars:
            env[v] = None  # constants carry no dependency

        def read(a):
            return env.get(a) if not hasattr(a, "val") else None

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            sub = _sub_jaxpr(eqn) if eqn.primitive.name in _INLINE else None
            if sub is not None:
                outs = run(sub, ins)
            else:
                outs = [next(counter) for _ in eqn.outvars]
                eqns.append((eqn.primitive.name, ins, outs))
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(a) for a in jaxpr.outvars]

    inputs = [next(counter) for _ in closed.jaxpr.invars]
    outputs = run(closed.jaxpr, inputs)
    return _Flat(len(inputs), eqns, outputs)


def _sub_jaxpr(eqn):
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(name)
        if sub is not None:
            return getattr(sub, "jaxpr", sub)
    return None


def _dependencies(flat: _Flat) -> dict[int, frozenset]:
    deps = {i: frozenset([i]) for i in range(flat.num_inputs)}
    for _, ins, outs in flat.eqns:
        d = frozenset().union(*(deps.get(i, frozenset()) for i in ins if i is not None))
        for o in outs:
            deps[o] = d
    return deps


def _reach(flat: _Flat) -> dict[int, frozenset]:
    """For each variable id, the output positions it flows into."""
    reach: dict[int, set] = {}
    for pos, o in enumerate(flat.outputs):
        if o is not None:
            reach.setdefault(o, set()).add(pos)
    for _, ins, outs in reversed(flat.eqns):
        r = set().union(*(reach.get(o, set()) for o in outs))
        for i in ins:
            if i is not None and r:
                reach.setdefault(i, set()).update(r)
    return {k: frozenset(v) for k, v in reach.items()}


def _uses(flat: _Flat, deps, kernel_inputs: Sequence[int]) -> dict[int, list]:
    """Operations that combine a kernel (or a value computed from it alone) with other data."""
    kernels = set(kernel_inputs)
    uses: dict[int, list] = {k: [] for k in kernel_inputs}
    for eqn in flat.eqns:
        _, ins, _ = eqn
        in_deps = [deps.get(i, frozenset()) for i in ins if i is not None]
        union = frozenset().union(*in_deps)
        for d in in_deps:
            if len(d) == 1 and next(iter(d)) in kernels and union != d:
                uses[next(iter(d))].append(eqn)
    return uses


def _layer_of(path) -> str | None:
    keys = [k.key for k in path if isinstance(k, DictKey)]
    return keys[0] if keys else None


def _layers_in(path) -> set:
    return {k.key for k in path if isinstance(k, DictKey)}


def _is_kernel(path) -> bool:
    return bool(path) and isinstance(path[-1], DictKey) and path[-1].key == "kernel"


_DECLARED = {"custom_vjp_call", "custom_vjp_call_jaxpr"}  # layers with a declared backward
_CALLS = {"jit", "pjit", "closed_call", "core_call"}


def _differentiated_kernel_op(fun, args, kernel_ids: set) -> str | None:
    """The first op through which autodiff of `fun` at `args` would differentiate a kernel.

    A kernel (an argument or closed-over value that is one of the model's kernels) that
    enters an ordinary op is differentiated through; one that enters only custom_vjp layers
    (whose backward is declared, as FA's is) or stop_gradient is not.
    """
    try:
        closed = jax.make_jaxpr(fun)(*args)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return f"untraceable ({type(e).__name__})"
    leaves = jax.tree.leaves(args)
    marked = {v for v, a in zip(closed.jaxpr.invars, leaves, strict=False) if id(a) in kernel_ids}
    marked |= {v for v, c in zip(closed.jaxpr.constvars, closed.consts, strict=True)
               if id(c) in kernel_ids}
    return _scan_kernel_ops(closed.jaxpr, marked)


def _scan_kernel_ops(jaxpr, marked: set) -> str | None:
    for eqn in jaxpr.eqns:
        hits = [v for v in eqn.invars if not hasattr(v, "val") and v in marked]
        if not hits:
            continue
        name = eqn.primitive.name
        if name in _DECLARED or name == "stop_gradient":
            continue
        if name in _CALLS:
            sub = _sub_jaxpr(eqn)
            inner = {iv for iv, ov in zip(sub.invars, eqn.invars, strict=True)
                     if not hasattr(ov, "val") and ov in marked}
            found = _scan_kernel_ops(sub, inner)
            if found:
                return found
            continue
        if len(hits) == len([v for v in eqn.invars if not hasattr(v, "val")]):
            marked.update(eqn.outvars)  # a function of the kernel alone (reshape, rev, ...)
            continue
        return name
    return None


@contextlib.contextmanager
def _watch_autodiff(kernel_ids: set, calls: list):
    """Wraps jax's autodiff entry points to record calls that differentiate a kernel."""
    saved = {name: getattr(jax, name) for name in _AUTODIFF}

    def check(name, fun, args):
        op = _differentiated_kernel_op(lambda *a: _first(fun(*a)), tuple(args), kernel_ids)
        if op is not None:
            calls.append(f"jax.{name} of {getattr(fun, '__qualname__', fun)!s} "
                         f"differentiates through a forward kernel (op {op})")

    def transform(name):
        original = saved[name]

        def wrapped(fun, *t_args, **t_kwargs):
            inner = original(fun, *t_args, **t_kwargs)

            @functools.wraps(inner)
            def call(*args, **kwargs):
                check(name, functools.partial(fun, **kwargs) if kwargs else fun, args)
                return inner(*args, **kwargs)

            return call

        return wrapped

    def with_primals(name):
        original = saved[name]

        def wrapped(fun, *primals, **kwargs):
            args = tuple(primals[0]) if name == "jvp" else primals
            check(name, fun, args)
            return original(fun, *primals, **kwargs)

        return wrapped

    try:
        for name in ("grad", "value_and_grad", "jacrev", "jacfwd", "hessian"):
            setattr(jax, name, transform(name))
        for name in ("vjp", "jvp", "linearize"):
            setattr(jax, name, with_primals(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(jax, name, fn)


def _first(out):
    """The differentiated output, dropping an aux value (has_aux) if there is one."""
    return out[0] if isinstance(out, tuple) else out


def certify_step(step_fn: Callable, state: Any, images: jax.Array, labels: jax.Array, *,
                 forward_fn: Callable[[Any, jax.Array], Any]) -> Certificate:
    """Certifies `step_fn(state, images, labels) -> (new_state, metrics)`.

    `state` must have `.params` (the model's parameters); `forward_fn(params, images)` is
    the model's forward alone, the reference for each kernel's own uses.
    """
    kernel_ids: set = set()
    calls: list = []

    def traced(s, x, y):
        kernel_ids.update(id(leaf) for path, leaf in
                          jax.tree_util.tree_flatten_with_path(s.params)[0] if _is_kernel(path))
        return step_fn(s, x, y)

    with _watch_autodiff(kernel_ids, calls):
        closed = jax.make_jaxpr(traced)(state, images, labels)
    in_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path((state, images, labels))[0]]
    out_shape = jax.eval_shape(step_fn, state, images, labels)
    out_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]

    def in_params(path):
        return len(path) > 1 and isinstance(path[1], GetAttrKey) and path[1].name == "params"

    kernels = {i: p[2:] for i, p in enumerate(in_paths) if in_params(p) and _is_kernel(p[2:])}
    flat = _flatten(closed)
    deps, reach = _dependencies(flat), _reach(flat)
    uses = _uses(flat, deps, list(kernels))

    # Outputs that belong to some layer: params, synapses and optimizer state leaves.
    layer_names = set(state.params) | set(getattr(state, "feedback", None) or {})
    owners = {pos: _layers_in(p[1:]) & layer_names for pos, p in enumerate(out_paths)
              if p and p[0] == jax.tree_util.SequenceKey(0)}

    fwd_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
    fwd = _flatten(jax.make_jaxpr(forward_fn)(fwd_params, images))
    fwd_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path((fwd_params, images))[0]]
    fwd_kernels = {keystr(p[1:]): i for i, p in enumerate(fwd_paths)
                   if p[0] == jax.tree_util.SequenceKey(0) and _is_kernel(p[1:])}
    fwd_uses = _uses(fwd, _dependencies(fwd), list(fwd_kernels.values()))

    violations = []
    checked = 0
    for index, path in kernels.items():
        layer = _layer_of(path)
        name = keystr(path)
        cross = []
        for prim, _, outs in uses[index]:
            reached = frozenset().union(*(reach.get(o, frozenset()) for o in outs))
            others = sorted({lyr for pos in reached for lyr in owners.get(pos, ())} - {layer})
            if others:
                cross.append((prim, others))
        allowed = len(fwd_uses.get(fwd_kernels.get(name), []))
        checked += 1
        if len(cross) > allowed:
            # The forward uses reach every later layer (through e_L); report the others.
            extra = sorted(cross, key=lambda c: len(c[1]))[:len(cross) - allowed]
            ops = ", ".join(sorted({p for p, _ in extra}))
            reached = sorted({lyr for _, o in extra for lyr in o})
            violations.append(
                f"layer {layer!r}: kernel {name} enters {len(extra)} operation(s) besides its "
                f"forward use ({ops}) that reach other layers' targets/updates: "
                f"{', '.join(reached[:8])}{', ...' if len(reached) > 8 else ''}.")
    violations += [f"differentiation through the network: {c}" for c in calls]
    reasons = [
        f"(a) each of the {checked} forward kernels reaches other layers' targets, errors and "
        f"updates only through its own forward use; no W^T, sign(W) or copy of it elsewhere",
        "(b) no jax.grad/vjp/jvp/linearize/jacrev/jacfwd differentiates through a forward "
        "kernel (layers with a declared custom_vjp backward, like FA's, do not count)",
        f"checked {len(flat.eqns)} operations of the inlined train step",
    ]
    return Certificate(not violations, reasons, violations)
