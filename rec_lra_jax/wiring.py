"""Wiring as data: which error drives each node's target, through which error synapse.

A local rule's top-down sweep (`sweep.py`) and its local deltas (`local.py`) know nothing
about model families. What they need is a `Graph`, plain Python data built once per trace
from the shapes of a model's forward signals:

- `Unit`: a node that receives a target: its pre-activation h and activity z = phi(h)
  (paths into the signals), the synapse that drives it, and whether that synapse comes
  from the unit directly above ("adjacent") or over a skip.
- `Layer`: a weight layer: its input, the unit whose error is its output error, its
  normalisation signals (BatchNorm's x_hat and gain) and where its deltas go in params.
- `Synapse`: an error synapse E: the error it carries (a unit's error, or a layer's error
  behind its normalisation), the unit it displaces, its kind and shape.

Synapse kinds (docs/algorithm.md, "Error synapses"): "dense" (a matrix from the flattened
error to the flattened activity), "channel" (a matrix to channels, broadcast over space),
"pool" (to channels through the adjoint of global average pooling), "conv" (a
conv-transpose with a kernel shaped like the forward kernel it stands in for) and
"identity" (no parameters: the error as it is, the adjoint of an identity shortcut) and
"upconv" (a conv-transpose then the adjoint of nearest upsampling: a decoder's synapse).

A `Wiring` is the user's choice ("recursive", "adjacent" or "direct" sources plus their
options); `build(wiring, signals, params)` turns it into a `Graph` with the builder of the
signals' family: `dense_chain_graph` for models returning per-layer tuples (`models.MLP`),
`residual_wiring.residual_graph` for models returning stem / blocks / head
(`resnet.ResNet`). A new wiring variant is a new builder or a new branch in one of them;
the sweep, the deltas and the rules stay.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Path = tuple  # keys into the nested signals dict (str keys, int tuple indices)
SOURCES = ("recursive", "adjacent", "direct", "transpose")
SKIP_SOURCES = ("dense", "channel", "head")
MODULES = ("block", "stage")
CHAINS = ("full", "shortcut")
LOCAL_LOSSES = ("none", "only", "mixed")
SKIP_LEARNING = ("kp", "regress", "perturb")
OUTPUT = "output"  # the unit whose error is eps(softmax(logits) - y)


@dataclasses.dataclass(frozen=True)
class Wiring:
    """Which layers take their target's displacement from which error (hashable, static).

    Attributes:
      sources: "recursive" (rec-LRA: error skips over a module tree), "adjacent" (LRA-E:
        each unit from the one above), "direct" (DFA: every unit from the output error) or
        "transpose" (the Kolen-Pollack chain, `rules.kolen_pollack`: every unit from the
        layers that read it, each through a synapse shaped like that layer, so the error
        travels backprop's path; a baseline with backprop's target hops, not rec-LRA).
      module_size: layers per module at the finest level (dense chains; rec-LRA's m).
      depth: recursion depth. Dense chains: any >= 1. Residual nets: 1 (every unit from
        the output), 2 (blocks from the output, layers inside a block from the layer
        above), 3 (stage outputs from the output, other blocks from the block above).
      skip_source: residual nets, how a block output reads the output error: "dense"
        (a (K, H*W*C) matrix), "channel" (a (K, C) matrix broadcast over space) or "head"
        (the chain: each block from the block above through a conv-transpose).
      head_last: residual nets, the last block through the head's pooling adjoint.
      module: residual nets, the module of the recursion at depth 2: "block" (the paper's
        reading: block outputs from the output error, the convs inside a block from the
        conv above) or "stage" (stage outputs from the output error, every other unit of a
        stage, the stem included in the first, from the layers directly above it in its
        stage through synapses shaped like them). Target hops on ResNet-18: 2 and 5.
      chain: with module "stage", what a unit inside a module reads from the block above it:
        "full" (synapses shaped like that block's first conv and its shortcut: backprop's
        path through the block, Kolen-Pollack) or "shortcut" (the shortcut's synapse only,
        the identity or one shaped like the projection: the residual branch's Jacobian is
        left out, the short paths of a residual net, Veit et al. 2016; two hops fewer per
        block). A departure.
      module_stages: with module "stage", consecutive stages per module, counted from the
        top (2 on ResNet-18: stages 3-4 end at the head, stages 1-2 at stage 2's end); a
        stage end inside a module reads the next stage's first block through `chain`.
      stem_module: with module "stage", the stem is a module of its own, driven like a
        stage end (from the output error and/or its own readout) instead of from the first
        stage's chain: one hop fewer on ResNet-18 (4), room for a deeper readout within 5.
      inner_loss: with module "stage" and a local loss, every block output inside a stage
        also reads its own readout's error beside the chain from the block above (deep
        supervision inside the module; the same hops). A departure.
      local_loss: residual nets, what a unit that the recursion drives from the output
        error reads instead ("only") or as well ("mixed"): the error of its own linear
        readout, softmax(pool(z) A) - y, with A learned by its local delta and carried back
        by a Kolen-Pollack pool synapse (a block-local loss: Nokland & Eidnes 2019,
        Belilovsky et al. 2020). A departure from the paper; "none" is the paper's.
      local_loss_grid: the readout's average pooling grid (g x g cells per channel; on a
        map g does not divide, the largest divisor of g that divides it).
      local_loss_hidden: 0 (a linear readout) or the width of one ReLU hidden layer in it
        (a richer local loss, one hop more: Belilovsky et al.'s auxiliary MLPs).
      local_loss_conv: 0 or the channels of one 3x3 ReLU conv layer in a readout, before
        its pooling (a convolutional auxiliary net: Belilovsky et al. 2019, 2020; Ma et
        al.'s AugLocal, ICLR 2024), in every readout where it does not lengthen the
        wiring's critical path (on ResNet-18 with stages: stages 2 and 3, not stage 1,
        whose chain of 5 units sets the path). Its kernel K and A's synapse A_back start
        as one draw / zero; the readout carries its error to the conv's units itself and a
        Kolen-Pollack conv synapse (starting as K) carries it on to the unit.
      local_loss_recon: 0 or the weight of a reconstruction term beside the readout (an
        information-preserving local loss, InfoPro, Wang et al. 2021): a decoder D, one
        3x3 conv from the unit's map upsampled (nearest) to the input's size, predicts the
        input image; its error x_hat - x is carried back by a Kolen-Pollack "upconv"
        synapse, and that displacement is scaled to `local_loss_recon` times the norm of
        the unit's other drive (batch Frobenius norms). Same hops as the readout.
      local_loss_distill: a in [-1, 1], 0 off: each readout's target is (1 - a) y + a
        softmax(logits). a > 0 mixes the network's own output into the label
        (self-distillation into the block-local losses, as "Be Your Own Teacher", Zhang et
        al. 2019); a < 0 adds |a| times the output error to the readout's, e_r + |a| e_L,
        carried into the unit by the readout's own synapse (a departure either way). The
        output exists after the forward pass, so the readouts' errors stay one hop from
        it; the final layer's error is unchanged.
      local_loss_distill_each: () or one a per readout, from the input up (stage 1's
        first), in place of `local_loss_distill` (e.g. e_L into stage 1 only); the
        graph's builder checks the count.
      local_loss_sim: 0 or beta in (0, 1) of Nokland & Eidnes's "predsim" local loss
        (2019), (1 - beta) pred + beta sim, beside the readout: a learned 3x3 conv S of the
        unit's map, h = conv(z, S); sim = mean((R(h) - R(y))^2) with R the cosine
        similarity matrix over the batch of each example's per-channel spatial standard
        deviations (centred), R(y) that of the labels. Its error (the loss's derivative in
        h, a parameter-free function of h and the labels, like softmax - y) is carried back
        by a Kolen-Pollack conv synapse that starts equal to S and gets S's delta, weighted
        beta / (1 - beta) against the readout's. Same hops as the readout. A departure.
      skip_learning: residual nets, how a skip synapse from the output error learns: "kp"
        (the paper's Kolen-Pollack rule, dE = gamma corr(z_u, e_out)) or "regress" (a
        departure: its displacement e_out E is regressed onto the teacher, the displacement
        the layers directly above would carry to the unit through synapses shaped like
        them, computed beside the sweep and never used as a target; like a synthetic
        gradient, Jaderberg et al. 2017, linear in the output error).
        "perturb" (a departure): each skip from the output error is the averaged Jacobian of
        the logits in the unit's output, estimated from activity alone: a second forward
        pass with the unit's output moved by sigma xi (xi ~ N(0, 1)) gives
        Delta = (logits' - logits) / sigma, and E regresses onto mean(Delta^T xi) (node
        perturbation; Ren et al., ICLR 2023). No weight is read; the probe is forward use.
      skip_activity: with "regress", each skip from the output error also reads the unit's
        own activity z through a "bilinear" synapse F (K, C, C): d = e E + z (sum_k e_k F_k),
        a 1x1 map of z chosen by the output error (a conditioned synthetic gradient). Still
        one hop; a departure.
    """

    sources: str = "recursive"
    module_size: int = 2
    depth: int = 2
    skip_source: str = "dense"
    head_last: bool = True
    module: str = "block"
    chain: str = "full"
    module_stages: int = 1
    stem_module: bool = False
    inner_loss: bool = False
    local_loss: str = "none"
    local_loss_grid: int = 1
    local_loss_hidden: int = 0
    local_loss_conv: int = 0
    local_loss_recon: float = 0.0
    local_loss_sim: float = 0.0
    local_loss_distill: float = 0.0
    local_loss_distill_each: tuple[float, ...] = ()
    skip_learning: str = "kp"
    skip_activity: bool = False

    def init(self, key: jax.Array, signals: Any, params: dict, *, activation: Any = None,
             feedback_init: str | None = None, feedback_scale: float = 1.0,
             weight_mirror: float = 0.0) -> dict[str, jax.Array]:
        """The error synapses of this wiring on a model whose forward gave `signals` (arrays
        or shapes) for `params`, as `model.init` gives a model's parameters
        (`local.init_feedback`: the options and what they do)."""
        from rec_lra_jax import local  # noqa: PLC0415 - local builds on this module

        return local.init_feedback(key, self, signals, params, activation=activation,
                                   feedback_init=feedback_init, feedback_scale=feedback_scale,
                                   mirror_samples=weight_mirror)

    def __post_init__(self):
        if self.sources not in SOURCES:
            raise ValueError(f"Unknown wiring sources {self.sources!r}; choose one of {SOURCES}.")
        if self.skip_source not in SKIP_SOURCES:
            raise ValueError(f"Unknown skip source {self.skip_source!r}; choose one of "
                             f"{SKIP_SOURCES}.")
        if not (isinstance(self.module_size, int) and isinstance(self.depth, int)
                and self.module_size >= 1 and self.depth >= 1):
            raise ValueError(f"module_size and depth must be integers >= 1, got "
                             f"{self.module_size!r}, {self.depth!r}.")
        if self.module not in MODULES:
            raise ValueError(f"Unknown module {self.module!r}; choose one of {MODULES}.")
        if self.chain not in CHAINS:
            raise ValueError(f"Unknown chain {self.chain!r}; choose one of {CHAINS}.")
        if not (isinstance(self.module_stages, int) and self.module_stages >= 1):
            raise ValueError(f"module_stages must be an integer >= 1, got "
                             f"{self.module_stages!r}.")
        if (self.chain != "full" or self.module_stages != 1) and self.module != "stage":
            raise ValueError("chain and module_stages shape the modules of module='stage' "
                             "(with module='block' every block is a module).")
        if self.stem_module and self.module != "stage":
            raise ValueError("stem_module splits the stem from the first stage: it needs "
                             "module='stage' (with module='block' the stem is already its "
                             "own module).")
        if self.inner_loss and (self.module != "stage" or self.local_loss == "none"):
            raise ValueError("inner_loss adds a readout to the blocks inside a stage: it "
                             "needs module='stage' and local_loss 'only' or 'mixed'.")
        if self.local_loss not in LOCAL_LOSSES:
            raise ValueError(f"Unknown local_loss {self.local_loss!r}; choose one of "
                             f"{LOCAL_LOSSES}.")
        if self.skip_learning == "perturb" and (self.skip_source != "dense"
                                                or self.local_loss == "only"):
            raise ValueError("skip_learning='perturb' learns the dense skips from the output "
                             "error: it needs skip_source='dense' and local_loss 'none' or "
                             "'mixed'.")
        if self.skip_activity and self.skip_learning != "regress":
            raise ValueError("skip_activity needs skip_learning='regress' (its bilinear "
                             "synapse has no Kolen-Pollack rule).")
        if self.skip_learning not in SKIP_LEARNING:
            raise ValueError(f"Unknown skip_learning {self.skip_learning!r}; choose one of "
                             f"{SKIP_LEARNING}.")
        if not (isinstance(self.local_loss_conv, int) and self.local_loss_conv >= 0):
            raise ValueError(f"local_loss_conv must be an integer >= 0, got "
                             f"{self.local_loss_conv!r}.")
        if self.local_loss_conv and (self.local_loss_hidden or self.local_loss == "none"):
            raise ValueError("local_loss_conv puts a conv layer in a readout: it needs "
                             "local_loss 'only' or 'mixed' and local_loss_hidden=0.")
        if not (isinstance(self.local_loss_hidden, int) and self.local_loss_hidden >= 0):
            raise ValueError(f"local_loss_hidden must be an integer >= 0, got "
                             f"{self.local_loss_hidden!r}.")
        if not (isinstance(self.local_loss_recon, int | float) and self.local_loss_recon >= 0):
            raise ValueError(f"local_loss_recon must be a number >= 0, got "
                             f"{self.local_loss_recon!r}.")
        if self.local_loss_recon and self.local_loss == "none":
            raise ValueError("local_loss_recon weights a term beside a local loss: set "
                             "local_loss to 'only' or 'mixed'.")
        if not (isinstance(self.local_loss_sim, int | float) and 0 <= self.local_loss_sim < 1):
            raise ValueError(f"local_loss_sim is predsim's beta, 0 <= beta < 1, got "
                             f"{self.local_loss_sim!r}.")
        if self.local_loss_sim and self.local_loss == "none":
            raise ValueError("local_loss_sim weights a term beside a local loss: set "
                             "local_loss to 'only' or 'mixed'.")
        d = self.local_loss_distill
        if not (isinstance(d, int | float) and -1 <= d <= 1):
            raise ValueError(f"local_loss_distill is the output's share of each readout's "
                             f"target, -1 <= a <= 1, got {d!r}.")
        if d and self.local_loss == "none":
            raise ValueError("local_loss_distill mixes the output into the readouts' "
                             "targets: set local_loss to 'only' or 'mixed'.")
        each = self.local_loss_distill_each
        if not (isinstance(each, tuple) and all(
                isinstance(a, int | float) and not isinstance(a, bool) and -1 <= a <= 1
                for a in each)):
            raise ValueError(f"local_loss_distill_each is a tuple of one a in [-1, 1] per "
                             f"readout, from the input up, got {each!r}.")
        if each and self.local_loss == "none":
            raise ValueError("local_loss_distill_each mixes the output into the readouts' "
                             "targets: set local_loss to 'only' or 'mixed'.")
        if not (isinstance(self.local_loss_grid, int) and self.local_loss_grid >= 1):
            raise ValueError(f"local_loss_grid must be an integer >= 1, got "
                             f"{self.local_loss_grid!r}.")


class Unit(NamedTuple):
    name: str
    pre: Path | None  # h (None for the output unit)
    post: Path | None  # z = phi(h)
    phi: Callable | None
    drive: str | tuple[str, ...] | None  # synapse name(s), their displacements summed
    # (None for the output unit)
    adjacent: bool = False  # driven by the unit directly above (alpha_adjacent)
    pool: tuple[int, int, int] | None = None  # max-pool (window, stride, pad) after z
    teach: tuple[str, ...] = ()  # synapses whose summed displacement its skip regresses on
    perturb: bool = False  # its skip from e_L learns the logits' Jacobian by perturbation


class Layer(NamedTuple):
    name: str  # top-level params key
    kind: str  # "dense" | "conv"
    input: Path
    unit: str  # the unit whose error is this layer's output error
    kernel: Path  # where the kernel sits inside params[name]
    kernel_shape: tuple[int, ...]
    bias: Path | None = None
    norm: Path | None = None  # signals with "xhat" and "gain" (BatchNorm), or None
    affine: Path | None = None  # BatchNorm scale/bias inside params[name], or None
    geometry: tuple[int, int] = (1, 0)  # conv (strides, padding)


class Synapse(NamedTuple):
    name: str  # feedback key
    kind: str  # "dense" | "channel" | "pool" | "conv"
    source: tuple[str, str]  # ("unit", name) or ("layer", name): the error it carries
    target: str  # the unit it displaces
    reads: Path  # the activity at the synapse's output (KP correlates it with the error)
    shape: tuple[int, ...]
    geometry: tuple[int, int] = (1, 0)
    init_index: int = 0  # fold_in index of its random init


class Readout(NamedTuple):
    """A unit's own readout (a block-local loss): logits = pool_g(z) A (linear) or
    relu(pool_g(z) A) A_out (one hidden layer), error softmax(logits) - y. Its weights
    are learned feedback entries, never forward weights. With a hidden layer the readout
    carries its error back to the hidden units itself (through A_back, a Kolen-Pollack
    synapse of A_out), so the error its pool synapse carries is one hop later."""

    name: str  # feedback key of A
    reads: Path  # the activity z it reads
    grid: int  # average pooling to grid x grid cells
    shape: tuple[int, int]  # A: (grid * grid * channels, hidden or classes)
    classes: int = 0  # with a hidden layer: A_out (hidden, classes), A_back (classes, hidden)
    sim: float = 0.0  # predsim's beta: a similarity term beside it (`Wiring.local_loss_sim`)
    conv: int = 0  # channels of a 3x3 ReLU conv before the pooling: K (3, 3, C_in, conv),
    # A (grid * grid * conv, classes), A_back (classes, grid * grid * conv)
    distill: float = 0.0  # the output's share of its target (`Wiring.local_loss_distill`)


def similarity_key(readout: "Readout") -> str:
    """The feedback key of a readout's similarity conv S, and the name of its error."""
    return f"{readout.name}_sim"


class Decoder(NamedTuple):
    """A unit's reconstruction of the input (`Wiring.local_loss_recon`): x_hat =
    conv3x3(upsample_f(z), D), error x_hat - x. D is a learned feedback entry, never a
    forward weight; its "upconv" synapse carries the error back, scaled to `weight` times
    the norm of the unit's other drive."""

    name: str  # feedback key of D
    reads: Path  # the activity z it reads
    target: Path  # the input image x
    factor: int  # nearest upsampling of z to x's size
    shape: tuple[int, int, int, int]  # D: (3, 3, channels, image channels)
    weight: float


class Graph(NamedTuple):
    units: dict[str, Unit]
    layers: dict[str, Layer]
    synapses: dict[str, Synapse]
    feedback_init: str  # the family's default init scheme for the synapses
    readouts: dict[str, Readout] = {}  # noqa: RUF012 - never mutated
    decoders: dict[str, Decoder] = {}  # noqa: RUF012 - never mutated


def drives(unit: Unit) -> tuple[str, ...]:
    """The names of the synapses whose displacements drive `unit` (summed)."""
    if unit.drive is None:
        return ()
    return (unit.drive,) if isinstance(unit.drive, str) else tuple(unit.drive)


def hops(graph: Graph) -> dict[str, int]:
    """Target hops of every unit: the synapse carries on the longest chain from an error
    that exists once the forward pass is done (the output's, a readout's) to the unit's
    error. Units with the same count can be computed side by side."""
    out = {name: int(r.classes > 0 or r.conv > 0) for name, r in graph.readouts.items()}
    out.update({similarity_key(r): 0 for r in graph.readouts.values() if r.sim})
    out.update({name: 0 for name in graph.decoders})

    def unit_hops(name: str) -> int:
        if name not in out:
            sources = [graph.synapses[s].source for s in drives(graph.units[name])]
            out[name] = 1 + max((unit_hops(graph.layers[src].unit if kind == "layer" else src)
                                 for kind, src in sources), default=-1)
        return out[name]

    for name in graph.units:
        unit_hops(name)
    return {name: out[name] for name in graph.units}


def teacher_hops(graph: Graph) -> dict[str, int]:
    """Hops of each unit's teacher (`Wiring.skip_learning="regress"`): computed beside the
    sweep for a synapse's update, never a target, but still a sequential step."""
    unit = hops(graph)
    out = {}
    for name, u in graph.units.items():
        if u.teach:
            sources = [graph.synapses[t].source for t in u.teach]
            out[name] = 1 + max(unit[graph.layers[src].unit if kind == "layer" else src]
                                for kind, src in sources)
    return out


def perturbed(graph: Graph) -> tuple[str, ...]:
    """The units whose skip from the output error learns by perturbation: the train step
    probes each with a second forward pass (`Wiring.skip_learning="perturb"`)."""
    return tuple(sorted(name for name, unit in graph.units.items() if unit.perturb))


def critical_path(graph: Graph) -> int:
    """The wiring's target hops: the longest chain of sequential sweep steps (SPEC, "Target
    hops"), teachers included. Backprop's is the number of weight layers below the output."""
    return max([*hops(graph).values(), *teacher_hops(graph).values()])


def levels(graph: Graph) -> dict[int, tuple[str, ...]]:
    """{target hops: the units whose errors are known after that many sweep steps}: each
    level's units depend only on lower levels, so they can be computed side by side."""
    out: dict[int, list[str]] = {}
    for name, h in hops(graph).items():
        out.setdefault(h, []).append(name)
    return {h: tuple(sorted(out[h])) for h in sorted(out)}


def groups(graph: Graph) -> dict[tuple, tuple[str, ...]]:
    """{(level, the kinds and shapes of the synapses that drive a unit): its units}: units
    of one level whose drives have the same kinds and shapes could share one batched
    (vmapped) carry."""
    unit_hops, out = hops(graph), {}
    for name, unit in graph.units.items():
        drive = tuple((graph.synapses[s].kind, graph.synapses[s].shape) for s in drives(unit))
        out.setdefault((unit_hops[name], drive), []).append(name)
    return {key: tuple(sorted(names)) for key, names in sorted(
        out.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))}


def reach(graph: Graph) -> dict[str, int]:
    """{readout: the most target hops of a unit whose error depends on it}."""
    unit_hops, memo = hops(graph), {}

    def origins(name: str) -> frozenset:
        if name not in memo:
            found = set()
            for s in drives(graph.units[name]):
                kind, src = graph.synapses[s].source
                src = graph.layers[src].unit if kind == "layer" else src
                found |= {src} if src in graph.readouts else (
                    origins(src) if src in graph.units else set())
            memo[name] = frozenset(found)
        return memo[name]

    out = {}
    for name in graph.units:
        for r in origins(name):
            out[r] = max(out.get(r, 0), unit_hops[name])
    return out


def get(signals: Any, path: Path) -> Any:
    """signals[path[0]][path[1]]... (dict keys and tuple indices)."""
    for key in path:
        signals = signals[key]
    return signals


def shape_of(signals: Any, path: Path) -> tuple[int, ...]:
    return tuple(get(signals, path).shape)


def build(wiring: Wiring, signals: dict, params: dict, activation: Callable | None) -> Graph:
    """The Graph of `wiring` on a model whose forward returned `signals`.

    Only shapes are read (of signals and params): no values, so no forward weight can
    reach the sweep through the graph.
    """
    if not isinstance(signals, dict) or "logits" not in signals:
        raise ValueError("The model must return a dict with 'logits' and its signals "
                         "(docs/algorithm.md, 'Model contract').")
    if "blocks" in signals:
        from rec_lra_jax.residual_wiring import residual_graph  # noqa: PLC0415 - builds on this

        return residual_graph(wiring, signals, params)
    if {"inputs", "pre", "post"} <= set(signals):
        return dense_chain_graph(wiring, signals, params, activation)
    raise ValueError(f"Unknown signals {sorted(signals)}: a model returns either per-layer "
                     "'inputs', 'pre', 'post' (a dense chain) or 'stem', 'blocks', 'head' (a "
                     "residual net) besides 'logits' (docs/algorithm.md, 'Model contract').")


# ----------------------------------------------------------------------------- dense chains


def recursive_sources(num_layers: int, *, module_size: int, depth: int) -> tuple[int, ...]:
    """rec-LRA's error skips over a module tree, src(l) for l = 1..L-1 (docs/algorithm.md).

    A layer is a level-k module output when l % m^(depth - k) == 0 (smallest such k in
    1..depth-1). Level-1 outputs take their displacement straight from the output error;
    a level-k output (1 < k < depth) from the next level-k output above it in its parent
    module; every other layer from the layer directly above (the LRA-E pathway). So no
    layer is more than `depth` hops from the output. depth=1 gives DFA-like wiring; a
    module larger than the network gives LRA-E.
    """
    sources = []
    for l in range(1, num_layers):
        level = next(
            (k for k in range(1, depth) if l % module_size ** (depth - k) == 0), depth
        )
        if level == 1:
            sources.append(num_layers)
        elif level == depth:
            sources.append(l + 1)
        else:
            sources.append(min(num_layers, l + module_size ** (depth - level)))
    return tuple(sources)


def chain_sources(wiring: Wiring, num_layers: int) -> tuple[int, ...]:
    """src(l) for l = 1..L-1 of an L-layer dense chain."""
    if wiring.sources in ("adjacent", "transpose"):  # W_{l+1}^T's shape: the same chain
        return tuple(range(2, num_layers + 1))
    if wiring.sources == "direct":
        return (num_layers,) * (num_layers - 1)
    return recursive_sources(num_layers, module_size=wiring.module_size, depth=wiring.depth)


def layer_key(index: int) -> str:
    """Params key of dense layer `index` (0-based): "layer_00", ... (as `models.MLP`)."""
    return f"layer_{index:02d}"


def dense_chain_graph(wiring: Wiring, signals: dict, params: dict,
                      activation: Callable | None) -> Graph:
    """A chain of dense layers (MLP): units are the layers' activities, synapses are
    (d_src, d_l) matrices keyed by the receiving layer."""
    if activation is None:
        raise ValueError("A dense chain's targets need its hidden activation: build the rule "
                         "with activation=... (a name such as 'tanh' or any callable).")
    names = sorted(params)
    num_layers = len(signals["pre"])
    if len(names) != num_layers or not all("kernel" in params[n] for n in names):
        raise ValueError(f"The model returned {num_layers} layers of signals but its params "
                         f"have {len(names)} top-level entries {names}; each weight layer "
                         "must be one params entry with a 'kernel', in depth order.")
    widths = [shape_of(signals, ("post", i))[-1] for i in range(num_layers)]
    sources = chain_sources(wiring, num_layers)
    units = {names[-1]: Unit(names[-1], None, None, None, None)}
    synapses = {}
    for l, src in enumerate(sources, start=1):
        name = names[l - 1]
        units[name] = Unit(name, ("pre", l - 1), ("post", l - 1), activation, name,
                           adjacent=src == l + 1)
        synapses[name] = Synapse(name, "dense", ("unit", names[src - 1]), name, ("post", l - 1),
                                 (widths[src - 1], widths[l - 1]), init_index=l)
    layers = {}
    for l, name in enumerate(names):
        # layer l's input is layer l - 1's activity: name it so (the path a synapse into
        # that activity reads), the network's input for the first layer
        layers[name] = Layer(name, "dense", ("post", l - 1) if l else ("inputs", 0), name,
                             ("kernel",),
                             tuple(params[name]["kernel"].shape),
                             bias=("bias",) if "bias" in params[name] else None)
    return Graph(units, layers, synapses, feedback_init="unit")
