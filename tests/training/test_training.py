"""The training engine, checkpoints and the train / train-all commands, on real Fashion-MNIST."""
import json

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.files import tiny_profile
from training.augment import augment, augments_anything, random_crop, random_erase, random_hflip
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.cli import train, train_all
from training.config import ConfigError, load_profile, resolve_config
from training.engine import compute_loss, fit
from training.models import create_model
from training.optim import build_optimizer, build_scheduler


def _cfg(fmnist_dir, **over):
    run = {"model": "lenet", "epochs": 1, "batch_size": 64, "schedule": {"name": "constant"},
           "dataset": {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 2000}}
    run.update(over)
    return resolve_config(run)


def test_one_epoch_lenet_writes_checkpoint_and_history(fmnist_dir, tmp_path):
    metrics = fit(_cfg(fmnist_dir), tmp_path / "run", progress=False, log=lambda *_: None)
    run = tmp_path / "run"
    for f in ("best.pt", "last.pt", "config.json", "history.json", "metrics.json", "curves.png"):
        assert (run / f).is_file(), f
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, ckpt = model_from_checkpoint(run / "best.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"]["name"] == "lenet"
    assert ckpt["config"]["dataset"]["classes"][0] == "T-shirt/top"
    assert ckpt["config"]["dataset"]["train_images"] + ckpt["config"]["dataset"]["val_images"] == 2000
    assert abs(ckpt["config"]["dataset"]["val_images"] - 200) <= 5  # stratified: rounded per class
    hist = json.loads((run / "history.json").read_text())
    assert hist == ckpt["history"] and hist[0]["epoch"] == 1 and hist[0]["train_loss"] > 0
    # One epoch on 1,800 images is far above chance (10%) on the full official test set.
    assert metrics["test_images"] == 10_000 and metrics["test_acc"] > 0.5
    assert ckpt["metrics"]["test_acc"] == metrics["test_acc"]
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resume_continues_from_saved_epoch(fmnist_dir, tmp_path):
    quiet = {"progress": False, "log": lambda *_: None}
    fit(_cfg(fmnist_dir, epochs=1), tmp_path, **quiet)
    first = load_checkpoint(tmp_path / "last.pt")
    fit(_cfg(fmnist_dir, epochs=2), tmp_path, resume=True, **quiet)
    second = load_checkpoint(tmp_path / "last.pt")
    assert second["epoch"] == 2 and len(second["history"]) == 2
    assert second["history"][0] == first["history"][0], "resume must keep the earlier history"
    # The optimizer state was restored, not re-initialised: step counts carried over.
    steps = lambda c: next(iter(c["optimizer"]["state"].values()))["step"]  # noqa: E731
    assert float(steps(second)) == 2 * float(steps(first))


def test_early_stopping_stops_when_validation_stalls(fmnist_dir, tmp_path):
    cfg = _cfg(fmnist_dir, epochs=5, optimizer={"name": "sgd", "lr": 0.0}, early_stopping={"patience": 1})
    metrics = fit(cfg, tmp_path, progress=False, log=lambda *_: None)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == 1


def accuracy_of(model, fmnist_dir, spec) -> float:
    """Accuracy of ``model`` on the full official Fashion-MNIST test set, computed here (not by the engine)."""
    from glassbox.data import load_dataset, preprocess
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(preprocess(test.images, spec))).argmax(1).numpy()
    return float((pred == test.labels).mean())


def test_best_checkpoint_holds_the_best_epoch_when_validation_gets_worse(fmnist_dir, tmp_path):
    """Epoch 1 trains at lr 1e-3; a step schedule multiplying the lr by 30 every epoch (3e-2, then 0.9) wrecks
    the model after it, so validation gets worse and early stopping (patience 1) ends the run at epoch 2. best.pt
    must hold epoch 1's weights: their test accuracy, computed here, is the reported test_acc and far above
    last.pt's. Catches a best.pt written every epoch (the last weights), selection in the wrong direction, or a
    test score taken from the last weights instead of the best."""
    cfg = _cfg(fmnist_dir, epochs=5, optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
               schedule={"name": "step", "step_size": 1, "gamma": 30.0, "warmup_epochs": 0},
               early_stopping={"patience": 1})
    metrics = fit(cfg, tmp_path, progress=False, log=lambda *_: None)
    hist = json.loads((tmp_path / "history.json").read_text())
    val = [h["val_acc"] for h in hist]
    assert len(hist) == metrics["epochs_run"] == 2 and val[0] > val[1] + 0.1, val  # worse after epoch 1
    assert metrics["best_epoch"] == 1 and metrics["best_val"] == pytest.approx(val[0])
    best, ckpt = model_from_checkpoint(tmp_path / "best.pt")
    last, last_ckpt = model_from_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and last_ckpt["epoch"] == 2
    spec = {k: ckpt["config"]["dataset"][k] for k in ("channels", "size", "mean", "std")}
    best_acc, last_acc = accuracy_of(best, fmnist_dir, spec), accuracy_of(last, fmnist_dir, spec)
    print(f"val acc by epoch {val}; test acc of best.pt {best_acc:.4f}, of last.pt {last_acc:.4f}")
    assert best_acc == pytest.approx(metrics["test_acc"], abs=1e-4) and best_acc > last_acc + 0.1, (best_acc, last_acc)


def test_vae_run_reports_loss(fmnist_dir, tmp_path):
    """A conv VAE after one epoch of 84 steps on 1,350 images: its test loss (negative ELBO, nats per image) beats
    the mean training image used as every reconstruction (about 385 nats, measured here; a VAE that learned nothing
    scores that plus its KL; ~310 measured) by a margin. Catches a VAE that does not learn (the former setting, 7
    steps in warmup, scored 512 and passed ``< 600``), a loss that is not the ELBO per image, or test scoring on
    something else."""
    from tests.helpers.baselines import mean_image
    cfg = resolve_config({"model": "cvae", "epochs": 1, "batch_size": 16, "schedule": {"name": "constant"},
                          "optimizer": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0},
                          "dataset": {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 1500}})
    m = fit(cfg, tmp_path, progress=False, log=lambda *_: None)
    baseline = mean_image(fmnist_dir)["bce"]
    print(f"cvae test loss {m['test_loss']:.1f} nats (recon {m['test_recon']:.1f}, KL {m['test_kl']:.1f}); "
          f"mean image {baseline:.1f}")
    assert m["val_metric"] == "val_loss" and m["test_kl"] > 0
    assert m["test_loss"] == pytest.approx(m["test_recon"] + m["test_kl"], rel=1e-4)
    assert m["test_loss"] < baseline - 40, (m["test_loss"], baseline)
    assert cfg["task"] == "vae"
    assert load_checkpoint(tmp_path / "best.pt")["config"]["dataset"]["mean"] == [0.0]


def lr_trace(cfg: dict, steps: int, steps_per_epoch: int = 10) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under the config's schedule."""
    opt = build_optimizer(cfg, create_model(cfg["model"]["name"]))
    sched = build_scheduler(cfg, opt, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", ["constant", "step", "cosine"])
def test_schedules(name):
    cfg = resolve_config({"model": "logreg", "epochs": 4,
                          "schedule": {"name": name, "warmup_epochs": 1, "step_size": 2, "gamma": 0.1}})
    lrs = lr_trace(cfg, 40)
    peak = cfg["optimizer"]["lr"]
    if name == "constant":  # warmup for 10 steps, then the peak
        assert lrs[0] == pytest.approx(peak / 10) and lrs[9:] == [peak] * 31
    elif name == "step":  # warmup, then x0.1 every 2 epochs counted from the start
        assert lrs[0] < lrs[9] == pytest.approx(peak) and lrs[15] == pytest.approx(peak)
        assert lrs[25] == pytest.approx(peak * 0.1)
    else:
        assert lrs[0] < lrs[9] == pytest.approx(peak) and lrs[-1] < 0.01 * peak


@pytest.mark.parametrize("schedule", ["constant", "step", "exp"])
def test_warmup_then_any_schedule(schedule):
    cfg = resolve_config({"model": "logreg", "epochs": 6, "optimizer": {"name": "sgd", "lr": 1.0},
                          "schedule": {"name": schedule, "warmup_epochs": 2, "step_size": 3, "gamma": 0.5}})
    lrs = lr_trace(cfg, 60)
    assert lrs[0] == pytest.approx(0.05) and lrs[19] == pytest.approx(1.0)
    assert lrs[:20] == sorted(lrs[:20])  # the ramp rises
    assert lrs[55] == pytest.approx({"constant": 1.0, "step": 0.5, "exp": 0.5 ** 5}[schedule])


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "nadam", "adamw"])
def test_optimizers_and_penalties(opt_name):
    model = create_model("logreg")
    cfg = resolve_config({"model": "logreg", "optimizer": {"name": opt_name}})
    assert type(build_optimizer(cfg, model)).__name__.lower() == {
        "sgd": "sgd", "adam": "adam", "nadam": "nadam", "adamw": "adamw"}[opt_name]
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    plain = compute_loss(model, x, y, cfg)[0]
    penalised = resolve_config({"model": "logreg", "loss": {"l1": 1e-3, "l2": 1e-2}})
    assert compute_loss(model, x, y, penalised)[0] > plain
    # The fused kernels are used where torch has them (not NAdam), and they train: steps lower the loss.
    opt = build_optimizer(cfg, model)
    assert bool(opt.param_groups[0].get("fused")) == (opt_name != "nadam")
    first = None
    for _ in range(5):
        loss = compute_loss(model, x, y, cfg)[0]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert compute_loss(model, x, y, cfg)[0].item() < first


def test_allocator_tuning_keeps_freed_pages():
    """fit() raises glibc's mmap and trim thresholds so a training step reuses the previous step's
    pages: LeNet steps at batch 256 page-fault tens of thousands of times with glibc's defaults
    (a third of the step time on 2 cores) and almost never tuned. Page faults, not seconds: a count
    that does not depend on how busy the machine is."""
    import subprocess
    import sys
    code = """
import resource, sys, torch, torch.nn.functional as F
from training.allocator import tune_allocator
from training.models import create_model
if sys.argv[1] == "1":
    assert tune_allocator()
torch.manual_seed(0)
m = create_model("lenet").to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters())
x, y = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (256,))
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("0", "1")}
    assert faults["0"] > 5_000, faults  # the default allocator maps fresh pages every step
    assert faults["1"] < 0.1 * faults["0"], faults


def test_augmentations_are_batched_and_seeded():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    for i in range(2):  # every output is a 6x6 window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert any(torch.equal(out[i], padded[:, r:r + 6, c:c + 6]) for r in range(5) for c in range(5))
    flipped = random_hflip(x, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    spec = {"crop_pad": 2, "hflip": True, "noise_std": 0.1}
    a = augment(x, spec, torch.Generator().manual_seed(3))
    b = augment(x, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_random_erasing_blanks_one_rectangle_of_the_asked_size_in_the_asked_share():
    x = torch.ones(2000, 1, 28, 28)
    out = random_erase(x, 0.5, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(random_erase(x, 0.5, 0.25, torch.Generator().manual_seed(0)), out)  # seeded
    erased = out == 0
    share = erased.float().mean(dim=(1, 2, 3))
    hit = share > 0
    assert 0.45 < hit.float().mean() < 0.55  # about half the images, as p asks
    assert share[hit].min() >= 0.01 and share[hit].max() <= 0.27  # 2% to 25% of the area, after rounding
    for i in torch.nonzero(hit)[:50, 0]:  # each erased region is one filled rectangle
        rows, cols = erased[i, 0].any(1), erased[i, 0].any(0)
        assert erased[i, 0].sum() == rows.sum() * cols.sum()
        assert rows.int().diff().abs().sum() <= 2 and cols.int().diff().abs().sum() <= 2
    assert torch.equal(random_erase(x, 0.0, 0.25, torch.Generator().manual_seed(0)), x)
    assert not augments_anything({"crop_pad": 0, "hflip": False, "erase": 0.0, "erase_max_area": 0.4})
    assert augments_anything({"erase": 0.5})


def test_set_overrides_land_over_the_short_model_args(tmp_path):
    """`train-all --set model.args.widths=...` on a profile that writes `model_args = {...}` beside
    `model = "..."`: the override wins (it used to be merged under model_args and silently lost)."""
    profile = tmp_path / "p.toml"
    profile.write_text('[[runs]]\nname = "r"\nmodel = "speednet"\nmodel_args = { widths = [8, 8, 8], stem = 4 }\n'
                       'dataset = "cifar10"\n')
    (cfg,), _, _ = load_profile(profile, {"model.args.widths": [16, 16, 16], "dataset.subset": 100})
    assert cfg["model"]["args"]["widths"] == [16, 16, 16] and cfg["model"]["args"]["stem"] == 4
    assert cfg["dataset"]["name"] == "cifar10" and cfg["dataset"]["subset"] == 100


def test_config_errors():
    with pytest.raises(ConfigError, match="known models"):
        resolve_config({"model": "resnet9000"})
    with pytest.raises(ConfigError, match="optimizer"):
        resolve_config({"model": "lenet", "optimizer": {"name": "lion"}})
    with pytest.raises(ConfigError, match="quick"):
        load_profile("no-such-profile")
    for profile in ("quick", "full"):
        configs, _, study = load_profile(profile)
        assert study is None
        assert configs and all(c["task"] in ("classifier", "vae") for c in configs)


def test_train_all_tiny_profile(fmnist_dir, tmp_path):
    """train-all on a two-run profile: both runs are trained, summarised and printed, and each beats its trivial
    baseline measured here by a margin: lenet's test accuracy the majority class's share (10%), mlpvae's test
    loss the mean training image's nats. Catches runs that train nothing (chance accuracy passed the old
    ``0 < acc <= 1``) or a summary that reports another run's numbers."""
    from tests.helpers.baselines import mean_image
    profile = tmp_path / "tiny.toml"
    tiny_profile(profile, fmnist_dir, defaults='optimizer = { name = "adam", lr = 0.003, weight_decay = 0.0 }\n',
                 runs=f"""[[runs]]
model = "lenet"
[[runs]]
model = "mlpvae"
dataset = {{ name = "fashion-mnist", data_dir = "{fmnist_dir}", subset = 1000 }}
batch_size = 8
optimizer = {{ name = "adam", lr = 0.001, weight_decay = 0.0 }}
""")
    res = CliRunner().invoke(train_all, ["--config", str(profile), "--out", str(tmp_path / "out"), "--no-export",
                                         "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    runs = {r["run"]: r for r in summary["runs"]}
    assert set(runs) == {"lenet", "mlpvae"}
    base = mean_image(fmnist_dir)
    print(f"lenet test acc {runs['lenet']['test_acc']:.4f} (majority {base['majority']:.2f}); mlpvae test loss "
          f"{runs['mlpvae']['test_loss']:.1f} (mean image {base['bce']:.1f})")
    assert runs["lenet"]["test_acc"] > base["majority"] + 0.2, runs["lenet"]
    assert runs["mlpvae"]["test_loss"] < base["bce"] - 20, runs["mlpvae"]
    for name in runs:  # the summary's numbers are the run's own
        own = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert runs[name]["test_loss"] == own["test_loss"]
    assert runs["lenet"]["epochs"] == 1 and runs["lenet"]["wall_seconds"] > 0
    assert "lenet" in res.output and "test acc" in res.output


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    r = CliRunner().invoke(train, ["--model", "nope"])
    assert r.exit_code == 2 and "known models" in r.output
    r = CliRunner().invoke(train, ["--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "x"),
                                   "--no-progress"])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x" / "best.pt").exists()
    r = CliRunner().invoke(train_all, ["--profile", "nope"])
    assert r.exit_code == 2 and "quick" in r.output


def test_resume_refuses_a_different_validation_split(fmnist_dir, tmp_path):
    quiet = {"progress": False, "log": lambda *_: None}
    fit(_cfg(fmnist_dir, epochs=1), tmp_path, **quiet)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert len(ckpt["config"]["dataset"]["val_fingerprint"]) == 16
    # Same run directory, but the stored config claims another split: resume must refuse.
    ckpt["config"]["dataset"]["val_fingerprint"] = "0" * 16
    from training.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "last.pt", ckpt)
    from glassbox.data import DatasetError
    with pytest.raises(DatasetError, match="validation split differs"):
        fit(_cfg(fmnist_dir, epochs=2), tmp_path, resume=True, **quiet)


def test_bf16_autocast_trains_on_cpu(fmnist_dir, tmp_path):
    """precision = "bf16": the forward pass runs in bfloat16, the run learns, the weights stay float32."""
    from training.engine import autocast
    cfg = _cfg(fmnist_dir, precision="bf16")
    model = create_model("lenet")
    with autocast(cfg, torch.device("cpu")):
        assert model(torch.zeros(2, 1, 28, 28)).dtype == torch.bfloat16
    metrics = fit(cfg, tmp_path, progress=False, log=lambda *_: None)
    assert metrics["test_acc"] > 0.5
    m, ckpt = model_from_checkpoint(tmp_path / "best.pt")
    assert ckpt["config"]["precision"] == "bf16" and next(m.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        resolve_config({"model": "lenet", "precision": "fp16"})
    with pytest.raises(ConfigError, match="bce"):
        resolve_config({"model": "cvae", "precision": "bf16"})
