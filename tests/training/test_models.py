"""Registry-parametrised model tests: every model honours the contract in docs/architecture.md."""
import pytest
import torch
import torch.nn.functional as F

from training.models import create_model, list_models, model_info

CLASSIFIERS = list_models("classifier")
VAES = list_models("vae")
# Heavy models in a small form of the same architecture (ResNet-50: 1 Bottleneck per stage, narrow
# groups); tests/training/test_longtail.py checks the full-size one's shapes and layers.
SMALL = {"resnet50": {"blocks": [1, 1, 1, 1], "width_per_group": 16}}


def _input(name: str, n: int = 4) -> torch.Tensor:
    m = create_model(name, **SMALL.get(name, {}))
    torch.manual_seed(0)
    return torch.rand(n, m.in_chans, m.img_size, m.img_size)


def test_registry_lists_the_whole_zoo():
    expected = {"lenet", "mynet", "inception", "bnconvnet", "cifarcnn", "rowrnn", "resnet",
                "logreg", "mlp", "cvae", "mlpvae"}
    assert expected <= set(list_models())
    with pytest.raises(KeyError, match="known models"):
        model_info("no-such-model")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_contract(name):
    model = create_model(name, **SMALL.get(name, {})).eval()
    x = _input(name)
    logits, feats = model.forward_intermediates(x)
    assert logits.shape == (4, model.num_classes)
    assert torch.isfinite(logits).all()
    assert list(feats) == model.layers and model.layers, "layers must be named, in forward order"
    for layer, act in feats.items():
        assert act.shape[0] == 4 and torch.isfinite(act).all(), layer
        # Splitting at any layer reproduces the logits: the Grad-CAM graph relies on this.
        torch.testing.assert_close(model.forward_from(model.forward_to(x, layer), layer), logits)
    if model.cam_layer is not None:
        assert feats[model.cam_layer].ndim == 4
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)
    assert model.arch == name and isinstance(model.args, dict)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_one_step_lowers_the_loss(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).train()
    x, y = _input(name, 16), torch.arange(16) % model.num_classes
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def loss():
        torch.manual_seed(1)  # the same dropout masks before and after the step
        return F.cross_entropy(model(x), y)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


@pytest.mark.parametrize("name", VAES)
def test_vae_contract(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _input(name)
    recon, mean, logvar = model(x)
    assert recon.shape == x.shape and mean.shape == logvar.shape == (4, model.latent_dim)
    assert 0 <= recon.min() and recon.max() <= 1
    assert model.decode(model.encode(x)[0]).shape == x.shape
    assert model.layers == [] and model.cam_layer is None


@pytest.mark.parametrize("in_chans,size", [(1, 28), (1, 32), (3, 32), (3, 64)])
def test_cvae_sizes(in_chans, size):
    model = create_model("cvae", in_chans=in_chans, img_size=size).eval()
    x = torch.rand(2, in_chans, size, size)
    assert model(x)[0].shape == x.shape


def test_tta_flip_averages_the_mirror_in_eval_only():
    """Eval logits are the mean of the image's and its mirror's; training sees one pass; the layers
    are the image's own; Grad-CAM's single pass (forward_once) stays available."""
    torch.manual_seed(0)
    plain = create_model("lenet").eval()
    tta = create_model("lenet", tta_flip=True).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expect = (plain(x) + plain(x.flip(-1))) / 2
        torch.testing.assert_close(tta(x), expect)
        logits, feats = tta.forward_intermediates(x)
        torch.testing.assert_close(logits, expect)
        _, plain_feats = plain.forward_intermediates(x)
        for k in feats:
            torch.testing.assert_close(feats[k], plain_feats[k])
        torch.testing.assert_close(tta.forward_once(x), plain(x))
        assert not torch.allclose(expect, plain(x))
        tta.train()
        torch.testing.assert_close(tta(x), plain(x))
    assert tta.args["tta_flip"] is True
    with pytest.raises(ValueError, match="classifiers"):
        create_model("cvae", tta_flip=True)
