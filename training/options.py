"""Every training option, once: its dotted key, default, allowed values, help and ``train`` flag.

    from training.options import DEFAULTS, OPTIONS, ConfigError, check_values
    DEFAULTS["optimizer"]["lr"]             # the nested defaults profiles are merged over
    check_values(cfg)                       # ConfigError naming the key and what is allowed

The TOML/YAML profiles, ``--set KEY=VALUE`` and the ``train`` flags all read this table: the flags
are generated from the entries that name one (``training.cli``), the defaults and the checks of
single values from every entry (``training.config.resolve_config`` adds the checks that span
several keys). Adding an option is one entry here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass


class ConfigError(ValueError):
    """A profile or option that cannot be run; the CLIs print it as one line."""


@dataclass(frozen=True)
class Option:
    key: str                     # dotted config key, e.g. "optimizer.lr"
    default: object
    help: str
    flag: str | None = None      # the ``train`` flag; None: profiles and --set only
    type: type | None = None     # of a value (of each item of a list); None: the default's type
    choices: tuple = ()
    low: float | None = None     # allowed range; ``open``: which bounds are excluded ("low", "high", "both")
    high: float | None = None
    open: str = ""
    metavar: str | None = None

    @property
    def value_type(self) -> type:
        return self.type or type(self.default)

    def allowed(self) -> str:
        """What the range allows, as the error message and the flag's help say it."""
        lo = "(" if self.open in ("low", "both") else "["
        hi = ")" if self.open in ("high", "both") else "]"
        if self.high is None:
            return f"{'>' if lo == '(' else '>='} {self.low:g}"
        return f"in {lo}{self.low:g}, {self.high:g}{hi}"


# One row an option, grouped as the resolved config nests them (docs/architecture.md §3).
OPTIONS: tuple[Option, ...] = (
    Option("name", None, "Run name (directory under --out) [default: model[-dataset]].", type=str),
    Option("model.name", "lenet", "Registry name of the model (see --list-models).", "--model"),
    Option("model.args", {}, "Constructor argument, e.g. width=16 (repeatable; JSON values).", "--model-arg",
           metavar="KEY=VALUE"),
    Option("dataset.name", "fashion-mnist", "fashion-mnist, mnist, cifar10, lfw or lfw-min20.", "--dataset"),
    Option("dataset.data_dir", None, "Directory holding the dataset files (else $GLASSBOX_DATA_DIR, then system "
           "locations).", "--data-dir", type=str),
    Option("dataset.subset", None, "Train on a random subset of this many training images.", "--subset", type=int),
    Option("dataset.val_fraction", 0.1, "Fraction of the training set held out for validation (model selection).",
           "--val-fraction", low=0, high=1, open="both"),
    Option("dataset.longtail", False, "Keep only 10% of classes 0-4 (the long-tail CIFAR-10 variant); in a profile "
           "also a table {classes, keep}.", "--longtail"),
    Option("dataset.normalize", True, "false: pixels in [0, 1] instead of normalised by the dataset's mean and std."),
    Option("dataset.rebalance.method", "none", "Rebalance the training split's short classes: augment (flipped and "
           "noised copies) or oversample (repeated); glassbox/data/longtail.py."),
    Option("dataset.rebalance.noise_std", 0.05, "Noise of rebalance's augmented copies."),
    Option("dataset.rebalance.flip", 0.5, "Flip probability of rebalance's augmented copies."),
    Option("epochs", 10, "Number of epochs (with --time-budget: the most it may run).", "--epochs", low=1),
    Option("batch_size", 128, "Training batch size (the global batch under --nproc).", "--batch-size", low=1),
    Option("eval_batch_size", 1024, "Batch size of validation and test scoring.", low=1),
    Option("seed", 0, "Random seed (split, init, batches, augmentation).", "--seed"),
    Option("device", "auto", "auto (CUDA when present), cpu or cuda[:N].", "--device"),
    Option("channels_last", True, "Train 4-D inputs in the channels-last memory format."),
    Option("optimizer.name", "adamw", "Optimizer.", "--optimizer", choices=("sgd", "adam", "nadam", "adamw")),
    Option("optimizer.lr", 2e-3, "Peak learning rate.", "--lr", low=0),
    Option("optimizer.weight_decay", 5e-4, "Decoupled weight decay on weights (not biases or norms).", "--weight-decay",
           low=0),
    Option("optimizer.momentum", 0.9, "SGD momentum (0: plain SGD).", "--momentum", low=0),
    Option("optimizer.nesterov", False, "SGD: Nesterov momentum (needs --momentum above 0).", "--nesterov"),
    Option("schedule.name", "cosine", "Learning-rate schedule: constant; step (x gamma every --step-size epochs); exp "
           "(x gamma every epoch); cosine (to zero).", "--schedule", choices=("constant", "step", "exp", "cosine")),
    Option("schedule.warmup_epochs", None, "Linear warmup before any schedule [default: 1 for cosine, 0 otherwise].",
           "--warmup-epochs", type=float, low=0),
    Option("schedule.step_size", 10, "Epochs between decays for the step schedule.", "--step-size", low=1),
    Option("schedule.gamma", 0.1, "Decay factor for the step and exp schedules.", "--gamma"),
    Option("loss.name", "ce", "Classifier loss: cross-entropy, or MSE against one-hot targets (the reports' linear "
           "models).", "--loss", choices=("ce", "mse")),
    Option("loss.mse_on", "logits", "What --loss mse compares.", "--mse-on", choices=("logits", "softmax")),
    Option("loss.label_smoothing", 0.0, "Label smoothing for cross-entropy.", "--label-smoothing"),
    Option("loss.l1", 0.0, "L1 (lasso) penalty on weights, added to the loss.", "--l1"),
    Option("loss.l2", 0.0, "L2 (ridge) penalty on weights, added to the loss.", "--l2"),
    Option("loss.penalize_bias", False, "The L1/L2 penalties cover the biases too (as the reports did).",
           "--penalize-bias"),
    Option("loss.vae_recon", "bce", "VAE reconstruction loss.", "--vae-recon", choices=("bce", "mse", "l1")),
    Option("loss.kl_weight", 1.0, "VAE: weight of the KL term.", "--kl-weight"),
    Option("loss.class_weights", "none", "Training loss only: balanced weighs each class by n / (classes * count).",
           choices=("none", "balanced")),
    Option("loss.logit_adjust", 0.0, "Training loss only: cross-entropy on logits + tau * log(class prior) "
           "(Menon et al. 2021).", low=0),
    Option("init.name", "default", "Weight initialisation of Linear/Conv layers (default: PyTorch's).", "--init",
           choices=("default", "normal", "zeros", "xavier", "kaiming")),
    Option("init.std", 0.01, "Standard deviation for --init normal.", "--init-std"),
    Option("distill.teacher", None, "Distil from this teacher: a run folder, a .pt checkpoint or an exported model "
           "(ONNX).", "--teacher", type=str),
    Option("distill.loss", "mse", "Distillation: MSE on the logits or KL with --temperature.", "--distill-loss",
           choices=("mse", "kl")),
    Option("distill.temperature", 4.0, "Distillation temperature.", "--temperature", low=0, open="low"),
    Option("distill.alpha", 1.0, "Weight of the distillation term (1 - alpha on the labels).", "--alpha",
           low=0, high=1),
    Option("test_curves", False, "Also score the test split every epoch, for the curves only (selection stays on "
           "validation).", "--test-curves"),
    Option("snapshots.epochs", [], "Keep (and export) a checkpoint at this epoch (repeatable).", "--snapshot-epoch",
           type=int, low=1),
    Option("snapshots.train_acc", [], "Keep a checkpoint when train accuracy first reaches this level, e.g. 0.95 "
           "(repeatable).", "--snapshot-train-acc", type=float, low=0, high=1),
    Option("augment.crop_pad", 0, "Augmentation: random crop after padding by this many pixels.", "--crop-pad"),
    Option("augment.hflip", False, "Augmentation: random horizontal flips.", "--hflip"),
    Option("augment.erase", 0.0, "Augmentation: random erasing, with probability P one rectangle of 2-40% of the "
           "image set to 0.", "--erase", low=0, high=1, metavar="P"),
    Option("augment.erase_max_area", 0.4, "Random erasing: the largest rectangle, as a fraction of the image.",
           low=0, high=1),
    Option("augment.noise_std", 0.0, "Augmentation: Gaussian noise std (normalised units).", "--noise-std"),
    Option("clip_grad_norm", None, "Clip the gradient norm to this value.", "--clip-grad-norm", type=float),
    Option("ema", 0.0, "Keep an exponential moving average of the weights (e.g. 0.999 per step) and validate, "
           "checkpoint and export it [default: off]. Test-time flips: --model-arg tta_flip=true.", "--ema",
           low=0, high=1, open="high", metavar="DECAY"),
    Option("early_stopping.patience", None, "Early stopping: epochs without validation improvement.", "--patience",
           type=int),
    Option("early_stopping.min_delta", 0.0, "Early stopping: the least change that counts as an improvement."),
    Option("export", True, "train-all exports the run (false: it does not)."),
    Option("explain", ["gradcam"], "Explanation graphs the exported classifier carries: gradcam, gradcampp, "
           "saliency, ig, smoothgrad (training/export/explain.py); export --explain overrides it.", type=str),
    Option("explain_randomized", False, "The export also publishes <name>-randomized, the classifier with every "
           "layer re-initialised, for the model-randomisation check of its explanations."),
    Option("quantize", "none", "int8: the export also publishes <name>-int8 if it passes the INT8 gates "
           "(training/export/quantize.py); a refused variant is a warning, not a failed run.",
           choices=("none", "int8")),
    Option("time_budget", None, "Wall-time budget, e.g. 90s, 5m, 1h or seconds: the lr schedule runs on the "
           "fraction of it used and training stops when the next epoch would not fit.", "--time-budget", type=str,
           metavar="DURATION"),
    Option("cost", 1.0, "The run's weight when train-all shares a profile-wide time budget."),
    Option("precision", "fp32", "bf16: forward and loss under bfloat16 autocast (CUDA or CPU; float32 weights).",
           "--precision", choices=("fp32", "bf16")),
    Option("method", "engine", "engine (torch, training.engine.fit) or lda (scikit-learn, training.lda: one class "
           "against the rest).", choices=("engine", "lda")),
    Option("lda.train_images", 10000, "LDA: training images.", low=1),
    Option("lda.shrinkage", None, "LDA: scikit-learn's shrinkage (None, 'auto' or a number)."),
)
BY_KEY = {o.key: o for o in OPTIONS}


def _nest(pairs) -> dict:
    out: dict = {}
    for key, value in pairs:
        *path, last = key.split(".")
        node = out
        for k in path:
            node = node.setdefault(k, {})
        node[last] = copy.deepcopy(value)
    return out


DEFAULTS: dict = _nest((o.key, o.default) for o in OPTIONS)
CHOICES = {o.key: o.choices for o in OPTIONS if o.choices}  # checked before any data is read


def lookup(cfg: dict, key: str):
    node = cfg
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def _check_range(o: Option, value) -> None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{o.key} must be a number {o.allowed()}, got {value!r}") from None
    too_low = o.low is not None and (x <= o.low if o.open in ("low", "both") else x < o.low)
    too_high = o.high is not None and (x >= o.high if o.open in ("high", "both") else x > o.high)
    if too_low or too_high or x != x or isinstance(value, bool):  # x != x: NaN
        raise ConfigError(f"{o.key} must be {o.allowed()}, got {value!r}")


def check_values(cfg: dict) -> None:
    """Each option's value on its own: one of its choices, within its range (None, unset, is allowed
    where there are no choices)."""
    for o in OPTIONS:
        value = lookup(cfg, o.key)
        if o.choices and value not in o.choices:
            raise ConfigError(f"unknown {o.key} {value!r}; choose from {', '.join(o.choices)}")
        if o.low is not None and value is not None:
            for v in value if isinstance(value, list) else [value]:
                _check_range(o, v)
