"""Defaults shared by every config: the CIFAR-LT recipe of LDAM-DRW and SAFA's (R) defaults.

Dataset configs import `get_config()` from here and override what differs. Every field can be changed
from the command line: `--config.loss.name=ldam`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # --- data -----------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    # "digits" (scikit-learn's bundled 8x8 digits, no download), "tfds:NAME" (e.g. tfds:cifar10),
    # or "folder:PATH" (PATH/{train,test}/<class>/<image>).
    config.data.source = "digits"
    config.data.data_dir = ""  # tfds data_dir; "" = tfds default.
    # "memory": the training set lives on the devices and batches are drawn and augmented inside the jitted
    # step (CIFAR-scale data); "stream": tf.data decodes and augments on the host (ImageNet-scale data).
    config.data.pipeline = "memory"
    config.data.subsample = True  # False: train on the data as it is (already long-tailed).
    config.data.imbalance_factor = 100.0  # rho = n_max / n_min of the exponential profile.
    config.data.selection = "ldam"  # "ldam" | "first" | "random": which images each class keeps.
    config.data.selection_seed = 0  # seed for "ldam" (0 reproduces the LDAM-DRW code) and "random".
    config.data.image_size = 32  # images are resized to this square size.
    config.data.channels = 3  # 1 (grey) or 3 (RGB); images are converted.
    # Per-channel normalisation in [0, 1] pixel units; empty = computed from the training split.
    config.data.mean = ()
    config.data.std = ()
    config.data.augment = True  # random crop (zero padding) + horizontal flip, as in the CIFAR recipe.
    config.data.crop_padding = 4
    config.data.flip = True  # horizontal flip (off for data where mirroring changes the class, e.g. digits).
    # Streamed data only: brightness/contrast/saturation jitter strength (0 = off; iNat recipes use 0.4).
    config.data.color_jitter = 0.0
    # mixup (Zhang et al.): lam ~ Beta(alpha, alpha) per batch, in the jitted step; 0 = off (MiSLAS stage 1: 1.0).
    config.data.mixup_alpha = 0.0

    # --- model ----------------------------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet32"
    config.model.width = 16  # channels of stage 1 (16, 32, 64 in ResNet-32).
    config.model.blocks_per_stage = 5  # 5 = ResNet-32 (6n + 2 layers).
    config.model.head = "auto"  # "linear" | "normed" | "auto" (normed for LDAM, linear otherwise).
    # Backbone weights to start from (a folder written by `python -m safa_jax.convert_torchvision`); "" = random.
    config.model.init_checkpoint = ""
    config.model.allow_random_init = True  # False (recipes published from pretrained weights): init_checkpoint needed.
    # Dtype of the forward pass: "float32" | "bfloat16". bfloat16 computes in bfloat16 but keeps the parameters,
    # optimizer state and BatchNorm statistics float32 and the losses in float32 (the usual choice on TPUs
    # and H100s; safa_jax/precision.py). Checkpoints are float32 either way.
    config.model.compute_dtype = "float32"
    # Convolution implementation: "auto" | "xla" | "onednn". "auto" takes oneDNN's CPU kernels where they can run
    # (one CPU device, float32, the oneDNN wheels and a C++ compiler present; safa_jax/models/layer_ops.py),
    # XLA's everywhere else. Same mathematics either way.
    config.model.conv_backend = "auto"
    # How BatchNorm's normalisation is written: "folded" (x * a + (bias - mean * a), as PyTorch's CPU kernel; faster)
    # or "flax" (Flax's (x - mean) * a + bias). Same statistics and variables (safa_jax/models/batch_norm.py).
    config.model.batch_norm = "folded"

    # --- base loss ------------------------------------------------------------------------------
    config.loss = ml_collections.ConfigDict()
    # "ce" | "focal" | "ldam" | "balanced_softmax" (CE on logits + log n_j) | "logit_adjusted" (CE on
    # logits + la_tau * log prior; at la_tau = 1 the same loss as balanced_softmax).
    config.loss.name = "ce"
    # "none" | "reweight" (class-balanced weights from the start) | "resample" (class-balanced
    # sampling from the start) | "drw" (deferred re-weighting) | "drs" (deferred re-sampling).
    config.loss.train_rule = "none"
    config.loss.second_stage_epoch = 160  # DRW / DRS switch on at this (0-based) epoch.
    config.loss.cb_beta = 0.9999
    # Class-balanced sampling (resample / DRS): "class_balanced" weighs an example of class c by
    # (1 - cb_beta) / (1 - cb_beta**n_c), the reference sampler's form; "inverse_count" by 1 / n_c.
    config.loss.sampling_weights = "class_balanced"
    config.loss.focal_gamma = 1.0
    config.loss.ldam_max_margin = 0.5
    config.loss.ldam_scale = 30.0
    config.loss.la_tau = 1.0  # tau of the logit-adjusted loss.

    # --- optimisation ---------------------------------------------------------------------------
    config.batch_size = 128  # global batch, independent of the device count.
    config.eval_batch_size = 100
    config.num_epochs = 200
    config.num_train_steps = -1  # cap on steps; -1 = num_epochs * steps_per_epoch.
    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 0.1
    config.optim.momentum = 0.9
    config.optim.weight_decay = 2e-4  # L2 added to the gradient of every parameter, as in PyTorch SGD.
    config.optim.warmup_epochs = 5  # linear warm-up per epoch: lr * (epoch + 1) / warmup_epochs.
    config.optim.decay_epochs = (160, 180)  # from these (0-based) epochs ...
    config.optim.decay_factors = (0.01, 0.0001)  # ... lr = base lr * factor.

    # --- training method ------------------------------------------------------------------------
    # "plain" (the backbone on the real batch) or "safa" (its settings below); safa_jax/methods/.
    config.method = "plain"
    # A finished run's folder whose backbone starts this run (two-stage methods: --config.method=crt); "" = none.
    config.init_from = ""

    # --- RSG (config.method="rsg"; the official CIFAR code's defaults; safa_jax/methods/rsg.py) -------
    config.rsg = ml_collections.ConfigDict()
    config.rsg.stage = 2  # insert after this stage of the backbone.
    config.rsg.head_ratio = 0.2  # the largest 20 % of the classes are head classes.
    config.rsg.n_center = 15  # centers per class.
    config.rsg.contrastive_width = 256
    config.rsg.transfer_strength = 1.0  # in (0, 1]: generated features per batch, relative to the larger group.
    config.rsg.start_epoch = 160  # generation from this (0-based) epoch; the official epoch_thresh is 159.
    config.rsg.lambda_cesc = 0.1
    config.rsg.lambda_mv = 0.01

    # --- SAFA (config.method="safa"; see docs/method.md; (R) = our reconstruction) ---------------
    config.safa = ml_collections.ConfigDict()
    config.safa.stage = 2  # insert after stage 1, 2 or 3 of the backbone.
    config.safa.head_ratio = 0.2  # (R) top fraction of classes by count that are head classes.
    config.safa.num_slots = -1  # (R) generated tail features per batch; -1 = batch_size // 2.
    config.safa.start_epoch = 160  # (R) augmented features join the classification loss from here.
    config.safa.q_width = -1  # (R) contrastive module width; -1 = the feature's channel count.
    # (R) kernel of the E, D, G and Q convolutions: 3 (3x3) or 1 (1x1: 9x fewer module multiply-adds, for
    # wide features such as ResNet-50's 1024 channels after stage 3).
    config.safa.kernel_size = 3
    config.safa.lambda_reconstruction = 1.0  # (R)
    config.safa.lambda_contrastive = 0.1  # (R)
    config.safa.lambda_ms_head = 0.01  # (R)
    config.safa.lambda_ms_tail = 0.01  # (R)
    config.safa.use_reconstruction = True  # ablation switches of the paper.
    config.safa.use_contrastive = True
    config.safa.use_ms_head = True
    config.safa.use_ms_tail = True
    config.safa.ms_eps = 0.01  # (R) mode-seeking 1 / (ratio + eps); MSGAN's 1e-5 explodes.
    # Alternatives to the (R) defaults, for the study in docs/method.md ("What we tried"):
    # which tail sample each slot augments: "batch_samples" (every tail sample of the batch equally often),
    # "inverse_frequency" (in proportion to 1 / n_y), "uniform_classes" (each tail class in the batch equally).
    config.safa.tail_sampling = "batch_samples"
    config.safa.augmented_class_weights = True  # False: DRW's class weights apply to real samples only.
    config.safa.upper_bn_stats = "all"  # "real": the upper BatchNorms take statistics over real entries only.
    config.safa.delta_channels = -1  # E and D through this many channels (a bottleneck); -1 = full width.
    config.safa.q_pairs = "halves"  # Q's real pairs: "halves" (first vs second half) or "balanced" (half same-class).

    # --- evaluation (--mode=eval) ------------------------------------------------------------------
    config.eval = ml_collections.ConfigDict()
    # False: the config's data must be the checkpoint's (source, subsampling, selection); True: evaluate on
    # other data, with the many/medium/few-shot groups of the checkpoint's training split.
    config.eval.other_data = False
    # Post-hoc adjustment of any trained model: "none"; "logit_adjust" (argmax of logits - tau * log prior,
    # the prior from the checkpoint's training split; Menon et al.); or "tau_norm" (a linear head's class
    # weights w_j / ||w_j||^tau, no bias; Kang et al.).
    config.eval.posthoc = "none"
    config.eval.tau = 1.0
    # A search over tau, e.g. "0,0.25,0.5,0.75,1": every value evaluated and the best one reported as selected
    # on the test set (eval_results_POSTHOC_search.json); empty: only eval.tau.
    config.eval.tau_search = ""

    # --- run ------------------------------------------------------------------------------------
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000  # and always at the last step.
    config.checkpoint_every_epochs = 0  # also at the end of every N-th epoch (0 = off); long runs use 1.
    config.keep_checkpoints = 3
    config.eval_every_epochs = 10  # 0 = only at the end.
    config.eval_every_epoch_from = -1  # also after every epoch from this (0-based) epoch on; -1 = off.
    return config
