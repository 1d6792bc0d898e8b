"""The model zoo. Importing this package registers every family.

    from training.models import create_model, list_models
    print(list_models())
"""
from . import convnets, lenet, linear, resnet, rnn, speednet, vae  # noqa: F401  (registration side effects)
from .base import StagedClassifier
from .registry import create_model, list_models, model_info, register_model
from .vae import VAE

__all__ = ["create_model", "list_models", "model_info", "register_model", "StagedClassifier", "VAE"]
