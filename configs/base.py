r"""The shared base config: every key, its default and what it means.

`get_config("mlp")` or `get_config("resnet")` returns the keys every run reads plus the
groups of that model family; the dataset configs import it and override a few fields.
Valid ranges, choices and which rule, model or data source reads each key are checked
before anything compiles (`rec_lra_jax/config_schema.py`): a key the run would not read,
or a value out of range, is an error that names it. Counts in epochs are resolved to steps
at run time from the dataset size and batch size.
"""

import ml_collections


def get_config(family: str = "mlp") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.dataset = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | imagenet2012
    # rec_lra | lra_e | kp | dfa (local rules; kp: backprop through Kolen-Pollack
    # transposes, a baseline) | bp | fa | sign_symmetry (autodiff baselines)
    config.rule = "rec_lra"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "auto"  # auto | idx | cifar | folder | tfds | synthetic
    config.data.dir = ""  # IDX files, CIFAR-10 batches or an image-folder tree (train/, test/)
    config.data.download = False  # let tfds download when no local copy exists (network)
    config.data.tfds_data_dir = ""  # tfds's data_dir; empty: ~/tensorflow_datasets
    # Validation examples taken from the end of train; 0: the dataset's standard split.
    # Synthetic data draws its own validation split of this size (0: 128, streaming: 1/4).
    config.data.val_size = 0
    config.data.threads = 0  # grain reader threads decoding images; 0: one per CPU core
    config.data.processes = 0  # grain worker processes (streaming datasets); 0: threads only
    config.data.cache_dir = ""  # decoded image-folder cache; empty: ~/.cache/rec_lra_jax
    config.data.image_size = 0  # crop size of streaming datasets (ImageNet); 0: 224
    config.data.synthetic_size = 512  # training records of source=synthetic (streaming)

    config.lra = ml_collections.ConfigDict()  # the local rules' options (docs/algorithm)
    config.lra.beta = 0.1  # target nudge
    config.lra.gamma = 1.0  # error-synapse rate
    # constant | linear | cosine: beta (gamma) from lra.beta (lra.gamma) at step 0 to
    # lra.beta_final (lra.gamma_final) at the last step
    config.lra.beta_schedule = "constant"
    config.lra.beta_final = 0.01
    config.lra.gamma_schedule = "constant"
    config.lra.gamma_final = 0.1
    config.lra.depth = 2  # recursion depth (ResNets: 1, 2 or 3)
    config.lra.feedback_rule = "kp"  # kp | fixed | error_displacement
    config.lra.error_unit = "l2"  # l2 | mixed | cauchy
    config.lra.alpha_skip = 1.0  # mixed units at skip endpoints; paper preset 0.19
    config.lra.alpha_adjacent = 1.0  # mixed units at adjacent endpoints; paper preset 0.24
    # eps at the output: l2 keeps softmax - y; same: error_unit (the mixed preset then
    # collapses to one class, docs/algorithm.md)
    config.lra.output_error_unit = "l2"  # l2 | same | mixed | cauchy
    config.lra.feedback_scale = 1.0  # multiplies the synapses' init std (rec_lra, lra_e, dfa)
    config.lra.dx = False  # ablation: multiply errors by phi' in the weight update
    # local rules' deltas of same-shape layers and synapses from one jax.vmap per group,
    # and the sweep's carries of one error by several synapses from one matmul (the same
    # numbers up to float rounding; faster or not by backend: BENCHMARKS.md)
    config.lra.grouped = False
    # divide hidden mismatches by beta, e = eps((z - ybar) / beta): errors keep their scale
    # over long chains (without it they shrink by ~beta per hop)
    config.lra.rescale = False

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # adamw | sgd
    config.optim.lr = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.momentum = 0.9  # sgd only
    config.optim.schedule = "cosine"  # constant | cosine
    config.optim.final_lr_frac = 0.0  # cosine only: final lr / lr
    config.optim.clip_norm = 1.0  # per-tensor re-projection radius c; 0 disables
    # adamw, local rules: synapses whose Kolen-Pollack deltas equal a kernel's (or a
    # readout's) reuse its Adam moments instead of keeping their own (the same updates,
    # less memory); needs lra.gamma 1 and the kp synapse rule
    config.optim.share_moments = False
    # rec_lra with block-local readouts: their step (and their twin synapses') times this
    config.optim.readout_lr_scale = 1.0

    config.batch_size = 50
    config.eval_batch_size = 1000
    config.num_epochs = 100
    config.input_noise = 0.1  # sigma of additive Gaussian noise on training inputs
    config.augment = "none"  # none | crop_flip (in-memory images: pad-4 crop + flip)
    config.steps_per_call = 100  # train steps fused into one jitted lax.scan call
    # float32 | bfloat16: the forward's activations and matmuls; parameters, synapses,
    # BatchNorm statistics, optimizer state, logits and the local deltas stay float32
    config.dtype = "float32"
    config.log_every_steps = 0  # progress line and TensorBoard scalars every N steps; 0: off
    config.checkpoint_every_epochs = 1.0  # also at the end; fractions checkpoint mid-epoch
    config.keep_checkpoints = 2  # newest checkpoints kept; the best one is kept besides
    config.on_nonfinite = "stop"  # stop | skip (optax.apply_if_finite)
    config.max_consecutive_skips = 10  # skip only: consecutive non-finite steps before stopping

    config.mesh = ml_collections.ConfigDict()
    # Devices on the "data" mesh axis (each batch split over them); 0: every device. The
    # batch size must divide over them.
    config.mesh.data = 0
    # Devices on the "layer" mesh axis: each parameter, synapse and optimizer-state tensor
    # is split over them by its last dimension (each device updates 1/layer of every
    # layer); the data axis gets the rest. Must divide the device count.
    config.mesh.layer = 1

    config.diagnostics = ml_collections.ConfigDict()
    # Per epoch and layer: cos(rule delta, backprop gradient) and ||delta|| / ||gradient||.
    config.diagnostics.cosine = False
    config.diagnostics.test_curve = False  # test accuracy every epoch (curves; never selection)

    if family == "mlp":
        config.model = ml_collections.ConfigDict()
        config.model.name = "mlp"
        config.model.hidden = (256, 256, 256)
        # tanh | relu | leaky_relu | sigmoid | gelu | silu | elu | softplus | identity
        config.model.activation = "tanh"
        config.model.residual_gap = 0  # g; 0: no forward residual connections
        config.model.init = "lra_e"  # lra_e | unit | he | lecun
        config.lra.module_size = 2  # m: error skips every m layers (rec_lra)
        # he (N(0, 2 / fan_in), chosen on validation: docs/experiments/history.md,
        # "Fashion-MNIST MLP: first ablations") | lra_e (N(0, 1), the first release's) |
        # unit | lecun
        config.lra.feedback_init = "he"
        config.lra.baseline_feedback_init = "lecun"  # fa / dfa feedback matrices
    elif family == "resnet":
        config.model = ml_collections.ConfigDict()
        config.model.name = "resnet"
        config.model.depth = 18  # 18 | 34 | 50
        config.model.width = 64  # channels of the first stage
        config.model.stem = "cifar"  # cifar (3x3) | imagenet (7x7/2 + max-pool)
        config.model.use_bn = True
        config.model.bn_affine = True
        config.model.init = "he"  # lra_e | unit | he | lecun
        # multiplies the conv kernels' init std (BatchNorm makes the forward invariant to
        # it; smaller starts the weights nearer the origin, for every rule alike)
        config.model.init_scale = 1.0
        # bp, fa, sign_symmetry: False sends no gradient into a residual branch's input
        # (truncated backprop: the autodiff twin of lra.chain=shortcut)
        config.model.branch_gradient = True
        config.lra.skip_source = "dense"  # dense | channel | head
        config.lra.bn_error = "jacobian"  # jacobian | output | scaled
        config.lra.feedback_init = "he"  # synapse std = feedback_scale * sqrt(2 / fan_in)
        config.lra.baseline_feedback_init = "he"  # dfa feedback matrices
        config.lra.head_last = True  # the last block driven through the head
        # 0: off; > 0: the synapses that mirror a layer (the convs in a block or stage,
        # every conv in rule kp's chain, and the head's pool synapse) start at a
        # weight-mirror estimate of it from noise (Akrout et al., NeurIPS 2019), this many
        # noise samples per fan-in unit (relative error ~ 1 / sqrt(weight_mirror))
        config.lra.weight_mirror = 0.0
        # the recursion's module at depth 2: block (the paper's: block outputs from the
        # output error, the convs inside a block from the conv above) | stage (stage
        # outputs from the output error, the units inside a stage chained through
        # synapses shaped like the layers above them; target hops 2 vs 5 on ResNet-18)
        config.lra.module = "block"
        # with module=stage: what a unit reads from the block above it in its module: full
        # (its first conv's and shortcut's path) | shortcut (the shortcut's only: the
        # residual branch left out, two hops fewer per block; a departure)
        config.lra.chain = "full"
        # with module=stage: consecutive stages per module, from the top (a stage end
        # inside a module reads the next stage's first block through the chain)
        config.lra.module_stages = 1
        # with module=stage: the stem a module of its own (driven like a stage end) instead
        # of the last unit of stage 1's chain (target hops 5 -> 4 on ResNet-18)
        config.lra.stem_module = False
        # with module=stage and a local loss: the blocks inside a stage also read their own
        # readout's error beside the chain (deep supervision inside a module; same hops)
        config.lra.inner_loss = False
        # none (the paper's) | only | mixed: units driven from the output error read their
        # own linear readout's error instead / as well (a block-local loss; a departure)
        config.lra.local_loss = "none"
        config.lra.local_loss_grid = 1  # the readout pools to grid x grid cells
        config.lra.local_loss_hidden = 0  # 0: a linear readout; > 0: one ReLU hidden layer
        # 0 | > 0: the channels of a 3x3 ReLU conv in each readout where it adds no target
        # hop (a convolutional auxiliary net; a departure)
        config.lra.local_loss_conv = 0
        # 0 | > 0: beside the readout, a 3x3 conv decoder reconstructs the input image
        # (InfoPro's information-preserving term), its drive scaled to this times the
        # readout's norm (a departure)
        config.lra.local_loss_recon = 0.0
        # 0 | beta in (0, 1): beside the readout, Nokland & Eidnes's similarity-matching
        # term, (1 - beta) pred + beta sim (their "predsim", beta 0.99; a departure)
        config.lra.local_loss_sim = 0.0
        # a in [-1, 1], 0 off: each readout's target is (1 - a) y + a softmax(logits): a > 0
        # distils the network's own output into the readouts, a < 0 adds |a| e_L to each
        # readout's error (a departure either way)
        config.lra.local_loss_distill = 0.0
        # () | one a per readout, from the input up (stage 1's first), in place of
        # local_loss_distill: e.g. (-1.0, 0.0, 0.0) adds e_L to stage 1's readout only
        config.lra.local_loss_distill_each = ()
        # kp (the paper's) | regress: skip synapses from the output error regress their
        # displacement onto what the layers above would carry (a teacher beside the sweep;
        # a departure, docs/algorithm.md)
        config.lra.skip_learning = "kp"
        # regress only: each skip also reads the unit's activity z, d = e E + z (sum_k e_k F_k)
        config.lra.skip_activity = False
        # perturb only: the probe's step sigma (its output moved by sigma * N(0, 1))
        config.lra.probe_sigma = 0.05
        config.optim.lr = 3e-3
        config.optim.weight_decay = 0.05
        config.batch_size = 128
        config.eval_batch_size = 500
        config.steps_per_call = 1  # XLA:CPU runs convs ~10x slower inside a scan body
        config.log_every_steps = 100
    else:
        raise ValueError(f"Unknown model family {family!r}; choose 'mlp' or 'resnet'.")
    return config
