"""The wiring of a residual net (ResNet): `wiring.build` calls `residual_graph` when the model
returns "stem", "blocks" and "head" signals (docs/algorithm.md, "Wiring"). It reads only
shapes of the signals and parameters, as the dense chain's builder in wiring.py does.
"""

import dataclasses
import math

import jax

from rec_lra_jax.wiring import (
    Decoder,
    Graph,
    Layer,
    Path,
    Readout,
    Synapse,
    Unit,
    Wiring,
    critical_path,
    get,
    reach,
    shape_of,
    similarity_key,
)


def _conv_geometry(signals: dict, path: Path, kernel_size: int) -> tuple[int, int]:
    """(strides, padding) of a conv from its input and output maps."""
    strides = 1 if shape_of(signals, (*path, "input"))[1] == shape_of(
        signals, (*path, "conv"))[1] else 2
    return strides, (kernel_size - 1) // 2


def _between(upper: tuple, lower: tuple, kernel_size: int) -> tuple[int, int]:
    """Geometry of a conv-transpose synapse from an upper map back to a lower one."""
    return (1 if upper[1] == lower[1] else 2), (kernel_size - 1) // 2


def residual_graph(wiring: Wiring, signals: dict, params: dict,
                   deep: frozenset | None = None) -> Graph:
    """A residual net (ResNet): stem, blocks of conv(+BN) layers, a dense head.

    Units: every block output u_b (pre = h_b, post = relu(h_b)), every conv output inside a
    block below its top conv (relu(BN(conv))), and the stem. The top conv and the
    projection shortcut of a block take the block's error; the shortcut is held fixed.
    `deep`: the readouts that get `Wiring.local_loss_conv`'s conv layer (None: those where
    it keeps the critical path of the wiring without it).
    """
    if wiring.local_loss_conv and deep is None:
        shallow = residual_graph(dataclasses.replace(wiring, local_loss_conv=0), signals,
                                 params)
        path = critical_path(shallow)
        deep = frozenset(r for r, h in reach(shallow).items() if h + 1 <= path)
        return residual_graph(wiring, signals, params, deep)
    if wiring.sources == "adjacent":
        wiring = dataclasses.replace(wiring, sources="recursive", skip_source="head",
                                     head_last=True, depth=max(wiring.depth, 2))
    if wiring.sources == "direct":
        if wiring.skip_source == "head":
            raise ValueError(f"Direct wiring reads the output error at every unit; the "
                             f"{wiring.skip_source!r} skip source chains blocks instead. Use "
                             f"'dense' or 'channel'.")
        wiring = dataclasses.replace(wiring, depth=1)
    # "transpose": each block output from the next block's first conv error through a
    # synapse shaped like that conv, plus the next block's error through its shortcut (the
    # identity, or a synapse shaped like the projection); Kolen-Pollack makes each synapse
    # learn the same deltas as the forward layer it mirrors.
    mirrored = wiring.sources == "transpose"
    if mirrored:
        wiring = dataclasses.replace(wiring, depth=2, head_last=True, module="block",
                                     chain="full", module_stages=1, local_loss="none",
                                     skip_learning="kp", skip_activity=False)
    staged = wiring.module == "stage"
    if staged and (wiring.depth != 2 or wiring.skip_source not in ("dense", "channel")):
        raise ValueError(f"module='stage' drives stage outputs from the output error (skip "
                         f"source 'dense' or 'channel') and chains the units inside a stage "
                         f"(depth 2); got skip source {wiring.skip_source!r}, depth "
                         f"{wiring.depth}.")
    if wiring.depth > 3:
        raise ValueError(f"Residual nets support recursion depth 1, 2 or 3, got "
                         f"{wiring.depth}.")
    inner_direct = wiring.depth == 1  # layers inside a block straight from the output
    direct_kind = "dense" if wiring.skip_source == "dense" else "channel"
    blocks = sorted(signals["blocks"])
    stages = _stage_ends(signals, blocks)
    if staged:  # a module's end: the top stage end of each group of module_stages
        ends = sorted(stages)[::-1]
        stages = set(ends[::wiring.module_stages])
    branch = wiring.chain == "full"
    classes = shape_of(signals, ("logits",))[-1]
    relu = jax.nn.relu
    units = {"head": Unit("head", None, None, None, None)}
    layers = {"head": Layer("head", "dense", ("head", "input"), "head", ("kernel",),
                            tuple(params["head"]["kernel"].shape), bias=("bias",))}
    synapses = {}

    def conv_layer(name, path, unit):
        kernel = tuple(params[name]["conv"]["kernel"].shape)
        has_norm = "xhat" in get(signals, path)
        layers[name] = Layer(name, "conv", (*path, "input"), unit, ("conv", "kernel"), kernel,
                             norm=path if has_norm else None,
                             affine=("bn",) if "bn" in params[name] else None,
                             geometry=_conv_geometry(signals, path, kernel[0]))

    readouts, decoders = {}, {}

    def from_output(name, target, reads, kind=None, wiring=wiring):
        """A skip from the output error (and/or the unit's own readout); returns the drive."""
        kind = kind or wiring.skip_source
        u = shape_of(signals, reads)
        drive = []
        if kind == "pool" or wiring.local_loss != "only":
            shape = (classes, math.prod(u[1:])) if kind == "dense" else (classes, u[-1])
            synapses[name] = Synapse(name, kind, ("unit", "head"), target, reads, shape)
            drive.append(name)
        if kind != "pool" and wiring.skip_activity:
            gate = f"{name}_gate"
            synapses[gate] = Synapse(gate, "bilinear", ("unit", "head"), target, reads,
                                     (classes, u[-1], u[-1]))
            drive.append(gate)
        if kind == "pool" or wiring.local_loss == "none":
            return drive[0] if len(drive) == 1 else tuple(drive)
        grid = math.gcd(wiring.local_loss_grid, u[1], u[2])  # cells that tile the map
        readout = f"{name}_readout"
        channels = wiring.local_loss_conv if readout in (deep or ()) else 0
        features, hidden = grid * grid * (channels or u[-1]), wiring.local_loss_hidden
        readouts[readout] = Readout(readout, reads, grid, (features, hidden or classes),
                                    classes if hidden else 0, wiring.local_loss_sim, channels,
                                    wiring.local_loss_distill)
        local = name if wiring.local_loss == "only" else f"{name}_local"
        if channels:  # the readout's conv units' error, back through a synapse like K
            synapses[local] = Synapse(local, "conv", ("unit", readout), target, reads,
                                      (3, 3, u[-1], channels), (1, 1))
        else:
            synapses[local] = Synapse(local, "pool", ("unit", readout), target, reads,
                                      (hidden or classes, features), (grid, 0))
        drive.append(local)
        if wiring.local_loss_sim:  # predsim: S's error back through a synapse shaped like S
            synapses[f"{name}_sim"] = Synapse(
                f"{name}_sim", "conv", ("unit", similarity_key(readouts[readout])), target,
                reads, (3, 3, u[-1], u[-1]), (1, 1))
            drive.append(f"{name}_sim")
        if wiring.local_loss_recon:
            image = shape_of(signals, ("stem", "input"))
            decoder = f"{name}_decoder"
            decoders[decoder] = Decoder(decoder, reads, ("stem", "input"), image[1] // u[1],
                                        (3, 3, u[-1], image[-1]), wiring.local_loss_recon)
            synapses[f"{name}_recon"] = Synapse(f"{name}_recon", "upconv",
                                                ("unit", decoder), target, reads,
                                                decoders[decoder].shape,
                                                (image[1] // u[1], 1))
            drive.append(f"{name}_recon")
        return drive[0] if len(drive) == 1 else tuple(drive)

    def mirror_conv(name, target, reads, block, conv):
        """A synapse shaped like conv layer `conv` of `block`, reading that layer's error
        (Kolen-Pollack learns it with the deltas of the layer it mirrors)."""
        layer = f"{block}_{conv}"
        kernel = tuple(params[layer]["conv"]["kernel"].shape)
        synapses[name] = Synapse(name, "conv", ("layer", layer), target, reads, kernel,
                                 _conv_geometry(signals, ("blocks", block, conv), kernel[0]))

    def mirror(name, target, reads, upper, branch=True):
        """Synapses mirroring block `upper`'s first conv and its shortcut; returns their
        names. `branch=False`: the shortcut's only (Wiring.chain "shortcut")."""
        if not branch:
            if "proj" in signals["blocks"][upper]:
                mirror_conv(name, target, reads, upper, "proj")
            else:
                synapses[name] = Synapse(name, "identity", ("unit", upper), target, reads, ())
            return (name,)
        first = sorted(k for k in signals["blocks"][upper] if k.startswith("conv"))[0]
        mirror_conv(name, target, reads, upper, first)
        skip = f"{name}_skip"
        if "proj" in signals["blocks"][upper]:
            mirror_conv(skip, target, reads, upper, "proj")
        else:
            synapses[skip] = Synapse(skip, "identity", ("unit", upper), target, reads, ())
        return (name, skip)

    def teacher(name, reads, upper):
        """Teacher synapses of unit `name` from block `upper` (skip_learning="regress")."""
        if wiring.skip_learning != "regress":
            return ()
        return mirror(f"{name}_teach", name, reads, upper)

    def from_block(name, target, reads, upper):
        k = 3 if "conv3" not in signals["blocks"][upper] else 1
        lower, up = shape_of(signals, reads), shape_of(signals, ("blocks", upper, "post"))
        synapses[name] = Synapse(name, "conv", ("unit", upper), target, reads,
                                 (k, k, lower[-1], up[-1]), _between(up, lower, k))

    for i, b in enumerate(blocks):
        block = signals["blocks"][b]
        convs = sorted(k for k in block if k.startswith("conv"))
        post = ("blocks", b, "post")
        last = i == len(blocks) - 1
        chained = wiring.skip_source == "head" or mirrored or (
            wiring.depth == 3 and b not in stages) or (staged and b not in stages)
        drive, teach, probe = b, (), False
        if last and (wiring.head_last or chained):
            drive = from_output(b, b, post, kind="pool")
            chained = False
        elif mirrored or (staged and chained):
            drive = mirror(b, b, post, blocks[i + 1], branch)
            if staged and wiring.inner_loss:  # its own readout beside the chain
                local = dataclasses.replace(wiring, local_loss="only")
                drive = (*drive, from_output(f"{b}_inner", b, post, wiring=local))
        elif chained:
            from_block(b, b, post, blocks[i + 1])
        else:
            drive = from_output(b, b, post)
            teach = () if last else teacher(b, post, blocks[i + 1])
            probe = wiring.skip_learning == "perturb"  # its e_L skip learns by probing
        units[b] = Unit(b, ("blocks", b, "pre"), post, relu, drive, adjacent=chained,
                        teach=teach, perturb=probe)
        for j, c in enumerate(convs):
            name, path = f"{b}_{c}", ("blocks", b, c)
            top = j == len(convs) - 1
            conv_layer(name, path, b if top else name)
            if top:
                continue
            reads = (*path, "post")
            drive, teach = name, ()
            if inner_direct:
                drive = from_output(name, name, reads, kind=direct_kind)
                if wiring.skip_learning == "regress":
                    teach = (f"{name}_teach",)
                    mirror_conv(teach[0], name, reads, b, convs[j + 1])
            else:  # from the conv error of the layer above, through a conv-transpose
                mirror_conv(name, name, reads, b, convs[j + 1])
            units[name] = Unit(name, (*path, "bn"), reads, relu, drive,
                               adjacent=not inner_direct, teach=teach)
        if "proj" in block:
            conv_layer(f"{b}_proj", ("blocks", b, "proj"), b)
    stem = signals["stem"]
    reads = ("stem", "pooled") if "pooled" in stem else ("stem", "post")
    own = staged and wiring.stem_module  # the stem a module of its own
    chained, drive = (wiring.skip_source == "head" or mirrored or staged) and not own, "stem"
    teach = ()
    if mirrored or (staged and not own):  # module "stage": the stem is in stage 1
        drive = mirror("stem", "stem", reads, blocks[0], branch)
    elif chained:
        from_block("stem", "stem", reads, blocks[0])
    else:
        drive = from_output("stem", "stem", reads)
        teach = teacher("stem", reads, blocks[0])
    units["stem"] = Unit("stem", ("stem", "bn"), ("stem", "post"), relu, drive,
                         adjacent=chained,
                         pool=(3, 2, 1) if "pooled" in stem else None, teach=teach)
    conv_layer("stem", ("stem",), "stem")
    if wiring.local_loss_distill_each:  # one a per readout, from the input up
        order = sorted(readouts, key=lambda n: (not n.startswith("stem"), list(readouts).index(n)))
        if len(order) != len(wiring.local_loss_distill_each):
            raise ValueError(f"local_loss_distill_each has {len(wiring.local_loss_distill_each)} "
                             f"values; this wiring has {len(order)} readouts, from the input "
                             f"up: {', '.join(order)}.")
        for name, a in zip(order, wiring.local_loss_distill_each, strict=True):
            readouts[name] = readouts[name]._replace(distill=float(a))
    synapses = {n: s._replace(init_index=i) for i, (n, s) in enumerate(sorted(synapses.items()))}
    return Graph(units, layers, synapses, feedback_init="he", readouts=readouts,
                 decoders=decoders)


def _stage_ends(signals: dict, blocks: list[str]) -> set[str]:
    """The last block of each stage (where the next block changes the map size or width)."""
    ends = set()
    for upper, lower in zip(blocks[1:], blocks[:-1], strict=True):
        if shape_of(signals, ("blocks", upper, "post")) != shape_of(
                signals, ("blocks", lower, "post")):
            ends.add(lower)
    return ends | {blocks[-1]}
