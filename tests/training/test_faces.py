"""The faces (reports 000 and 002): LFW crop and size, the faces studies in tiny versions through
``train-all --study``, the VAE's L1 loss, and ``analyze vae`` by person name against a real server.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/training/test_faces.py
"""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from analysis import report
from analysis.cli import cli
from glassbox.data import DatasetNotFound, load_dataset
from glassbox.data.lfw import crop_npz
from glassbox.manifest import read_manifest
from tests.helpers.data import write_lfw_folders
from tests.helpers.files import strict_json
from tests.helpers.server import start_server, stop_server
from training.checkpoint import model_from_checkpoint
from training.cli import train_all
from training.config import ConfigError, find_config, load_profile, resolve_config
from training.datasets import load_split, to_tensors
from training.engine import evaluate, fit
from training.models import create_model
from training.tasks import vae_loss

PEOPLE = {"Ann_Smith": 12, "Bob_Jones": 10, "Carla_Diaz": 10, "Dan_Brown": 8}  # 40 faces


def analyze(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def faces_npz(tmp_path_factory):
    """A tiny LFW npz (x, y, names) made as the real one: 40 faces in the real folder layout, the
    centred 150 crop of each, at 32 px."""
    root = tmp_path_factory.mktemp("lfw")
    write_lfw_folders(root / "lfw-deepfunneled", PEOPLE)
    x, y, names = load_dataset_all(root, size=32, crop=150)
    (root / "npz").mkdir()
    np.savez(root / "npz" / "lfw-deepfunneled-32.npz", x=x, y=y, names=np.array(names))
    return root / "npz"


def load_dataset_all(root, **options):
    parts = [load_dataset("lfw", s, data_dir=root, cache=False, **options) for s in ("train", "test")]
    order = np.argsort(np.concatenate([p.labels for p in parts]), kind="stable")
    return (np.concatenate([p.images for p in parts])[order], np.concatenate([p.labels for p in parts])[order],
            parts[0].classes)


def test_lfw_crop_and_size_from_folders_and_npz(tmp_path):
    write_lfw_folders(tmp_path / "lfw-deepfunneled", {"Ann_A": 3, "Bob_B": 2})
    ds = load_dataset("lfw", "train", data_dir=tmp_path, size=16, crop=100, cache=False)
    assert ds.images.shape[1:] == (16, 16, 3) and ds.classes == ["Ann_A", "Bob_B"]
    first = Image.open(tmp_path / "lfw-deepfunneled" / "Ann_A" / "Ann_A_0001.jpg").convert("RGB")
    want = np.asarray(first.crop((75, 75, 175, 175)).resize((16, 16), Image.BILINEAR))  # centre first, then resize
    assert any(np.array_equal(want, im) for im in ds.images)
    # The npz holds the centred 150 square: a tighter centred crop of it is the same crop of the original.
    full = np.stack([np.asarray(Image.open(f).convert("RGB").crop((50, 50, 200, 200)))
                     for f in sorted((tmp_path / "lfw-deepfunneled").glob("*/*.jpg"))])
    direct = np.stack([np.asarray(Image.open(f).convert("RGB").crop((75, 75, 175, 175)).resize((16, 16),
                                                                                               Image.BILINEAR))
                       for f in sorted((tmp_path / "lfw-deepfunneled").glob("*/*.jpg"))])
    assert np.array_equal(crop_npz(full, 100, 16), direct)
    assert crop_npz(full, 150, 150) is full  # the npz's own crop at its own size: untouched
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "lfw-deepfunneled-32.npz", x=full, y=np.array([0, 0, 0, 1, 1]), names=np.array(["A", "B"]))
    assert load_dataset("lfw", "train", data_dir=npz_dir, crop=120, size=24).images.shape[1:] == (24, 24, 3)
    with pytest.raises(DatasetNotFound, match="needs the per-person JPEG folders"):
        load_dataset("lfw", data_dir=npz_dir, crop=200)  # wider than the npz's own crop


def test_faces_studies_tiny_through_train_all(faces_npz, tmp_path):
    """``train-all --study`` trains every variant of both faces studies; each run holds its variant's
    reconstruction loss (report 002: bce, mse, l1), and its test loss is that loss of its best weights on
    the test split, not another kind's. The shipped files keep the reports' settings."""
    for study, variants in (("faces-report000", ["cvae"]), ("faces-report002", ["bce", "mse", "l1"])):
        out = tmp_path / study
        r = CliRunner().invoke(train_all, ["--study", study, "--out", str(out), "--data-dir", str(faces_npz),
                                           "--set", "epochs=1", "--no-export", "--no-progress"])
        assert r.exit_code == 0, r.output
        summary, meta = strict_json(out / "summary.json"), strict_json(out / "study.json")
        assert [row["run"] for row in summary["runs"]] == variants == meta["variants"] and meta["report"] == study[-3:]
        for name in variants:
            cfg = strict_json(out / name / "config.json")
            assert cfg["dataset"]["name"] == "lfw" and cfg["epochs"] == 1
            if study.endswith("002"):
                assert cfg["loss"]["vae_recon"] == name
            losses = scored_losses(out / name)
            own = cfg["loss"]["vae_recon"]
            assert strict_json(out / name / "metrics.json")["test_loss"] == pytest.approx(losses[own], rel=1e-5)
            assert all(v != pytest.approx(losses[own], rel=1e-3) for k, v in losses.items() if k != own), losses
    c000 = load_profile(find_config(study="faces-report000"))[0][0]
    assert c000["model"]["args"] == {"latent_dim": 20, "kernel": 3} and c000["batch_size"] == 32
    assert c000["dataset"]["subset"] == 1000 and c000["dataset"]["size"] == 32 and c000["optimizer"]["name"] == "adam"
    c002 = load_profile(find_config(study="faces-report002"))[0]
    assert [c["loss"]["vae_recon"] for c in c002] == ["bce", "mse", "l1"] and c002[0]["dataset"]["crop"] == 150
    assert load_profile("faces")[0][0]["analysis"]["pair_names"]
    with pytest.raises(ConfigError, match="unknown analysis keys pairs"):
        resolve_config({"model": "cvae", "analysis": {"pairs": []}})


def scored_losses(run) -> dict[str, float]:
    """The run's best weights scored on its test split with each reconstruction loss (as the engine scores)."""
    model, ckpt = model_from_checkpoint(run / "best.pt")
    cfg = ckpt["config"]
    x, y = to_tensors(load_split(cfg, "test"), {k: cfg["dataset"][k] for k in ("channels", "size", "mean", "std")},
                      torch.device("cpu"))
    return {kind: evaluate(model, x, y, {**cfg, "loss": {**cfg["loss"], "vae_recon": kind}}, prefix="test")["test_loss"]
            for kind in ("bce", "mse", "l1")}


def test_vae_l1_reconstruction_loss():
    torch.manual_seed(0)
    model = create_model("cvae", in_chans=3, img_size=32, latent_dim=4, kernel=3).eval()  # eval: z = mean
    x = torch.rand(5, 3, 32, 32)
    cfg = resolve_config({"model": "cvae", "loss": {"vae_recon": "l1", "kl_weight": 0.5}})
    loss, parts = vae_loss(model, x, None, cfg)
    recon, mean, logvar = model(x)
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / 5
    assert parts["recon"].item() == pytest.approx((recon - x).abs().sum().item() / 5, rel=1e-5)
    assert loss.item() == pytest.approx(parts["recon"].item() + 0.5 * kl.item(), rel=1e-5)


@pytest.mark.parametrize("bad, says", [(["--alphas", "0,1.5"], "[0.0, 1.0]"), (["--alphas", "0,x"], "numbers"),
                                       (["--show", "0"], "--show"), (["--pair-names", "Ann_Smith"], "two person"),
                                       (["--direction", "Ann_Smith"], "two groups")])
def test_vae_option_parsing(bad, says):
    r = analyze("vae", "--server", "127.0.0.1:1", "--model", "x", *bad)  # refused before any connection
    assert r.exit_code == 2 and says in r.output, r.output


def test_vae_by_person_name_on_a_server(faces_npz, tmp_path, monkeypatch):
    """``analyze vae`` with named people: a misspelt name is one error with the close match; the figures
    it lists are on disk (and only those); the interpolation strip between two named faces starts and
    ends on those people's reconstructions (by the server's Reconstruct)."""
    from analysis import plots
    from analysis.common import dataset, unit_images
    from serving.client import GlassboxClient
    from training.export import export_checkpoint
    drawn = []  # (rows, row labels) of every rows figure analyze draws
    real = plots.rows_figure
    monkeypatch.setattr(plots, "rows_figure", lambda rows, labels, *a, **k: drawn.append((rows, labels))
                        or real(rows, labels, *a, **k))
    cfg = resolve_config({"model": "cvae", "model_args": {"latent_dim": 4, "kernel": 3}, "epochs": 1,
                          "dataset": {"name": "lfw", "data_dir": str(faces_npz), "crop": 120, "size": 32},
                          "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0},
                          "analysis": {"show": 3, "pair_names": ["Ann_Smith,Bob_Jones"]}})
    fit(cfg, tmp_path / "run", progress=False, log=quiet)
    export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "repo", name="faces", parity_images=8,
                      data_dir=faces_npz)
    proc, address = start_server(tmp_path / "repo")
    try:
        opts = ["--server", address, "--model", "faces", "--data-dir", faces_npz, "--out", tmp_path / "out"]
        r = analyze("vae", *opts, "--pair-names", "Ann_Smth,Bob_Jones")
        assert r.exit_code == 2 and r.output.count("Error") == 1, r.output
        assert "unknown person 'Ann_Smth'" in r.output and "close matches: Ann_Smith" in r.output
        # The run's [analysis] table: 3 reconstructions and its named pair, at the given alphas.
        r = analyze("vae", *opts, "--alphas", "0,0.5,1", "--images", 4)
        assert r.exit_code == 0, r.output
        v = strict_json(tmp_path / "out" / "faces" / "vae.json")
        assert v["show"] == 3 and v["alphas"] == [0, 0.5, 1] and v["pair_labels"] == [["Ann_Smith", "Bob_Jones"]]
        r = analyze("vae", *opts, "--split", "train", "--pair-names", "dan brown:1,Carla_Diaz",
                    "--direction", "Ann_Smith;Bob_Jones", "--direction-faces", "Carla_Diaz", "--strengths", "-1,0,1",
                    "--show", 2, "--images", 4)
        assert r.exit_code == 0, r.output
        v = strict_json(tmp_path / "out" / "faces" / "vae.json")
        assert v["pair_labels"] == [["Dan_Brown:1", "Carla_Diaz"]] and len(v["alphas"]) == 10
        assert v["direction"]["a"] == ["Ann_Smith"] and v["direction"]["norm"] > 0
        assert v["figures"] == ["vae_reconstructions.png", "vae_interpolations.png", "vae_direction.png",
                                "vae_samples.png"]
        assert "direction: 1 people" in r.output
        figures = tmp_path / "out" / "faces"
        assert sorted(f.name for f in figures.glob("*.png")) == sorted(v["figures"])
        for name in v["figures"]:
            with Image.open(figures / name) as im:
                assert im.format == "PNG" and min(im.size) >= 100, (name, im.size)
        man = read_manifest(tmp_path / "repo" / "faces" / "1")
        ds = dataset(man, None, "train", str(faces_npz))
        (a, b), = v["pairs"]
        assert a == np.flatnonzero(ds.labels == ds.classes.index("Dan_Brown"))[1]  # "dan brown:1": his second
        assert b == np.flatnonzero(ds.labels == ds.classes.index("Carla_Diaz"))[0]
        (strip, labels), = [(rows[0], labels) for rows, labels in drawn if "->" in labels[0]][-1:]
        assert labels == ["Dan_Brown:1\n-> Carla_Diaz"] and len(strip) == 10
        with GlassboxClient(address) as c:
            ends = c.reconstruct("faces", unit_images(man, ds.images[[a, b]]))
        np.testing.assert_allclose(strip[[0, -1]], ends, atol=1e-4)
        # The HTML report's faces section (analyze report draws it from the same vae.run result).
        page = report.render({"faces": {"manifest": man, "vae": v}}, tmp_path / "out", address).read_text()
        html = page[page.index("<h3>Faces</h3>"):page.index('<figure><img alt="Samples from the prior"')]
        assert "Dan_Brown:1 to Carla_Diaz" in html and html.count("<img") == 2
    finally:
        stop_server(proc)
